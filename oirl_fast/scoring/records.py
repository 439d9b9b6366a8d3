"""Input lines to items, items to output records, and the resume point of a partial output."""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..embed import empty_text_reason
from ..errors import OirlError
from ..jsonl import BadLine, iter_lines, iter_stream_lines, parse_json_line
from ..paths import is_stdio, is_stream
from .candidates import Candidates

OUTPUT_KEYS = ("line", "id", "prompt_id", "prompt", "score", "confidence", "low_confidence", "top_k", "scores", "error")
# Input fields that would collide with what oirl writes: such a line becomes an error record
# (whatever the options), so a user's field is never dropped or overwritten.
RESERVED_INPUT_KEYS = tuple(k for k in OUTPUT_KEYS if k != "id")


@dataclass
class Item:
    line: int
    id: object = None
    query: str | None = None
    extra: dict = field(default_factory=dict)
    error: str | None = None
    row: int = -1  # row in the --embeddings matrix


def parse_line(raw: str, line: int) -> Item:
    if not raw.strip():
        return Item(line, error="empty line")
    try:
        rec = parse_json_line(raw)
    except BadLine as exc:
        return Item(line, error=str(exc))
    if not isinstance(rec, dict):
        return Item(line, error=f"a record must be a JSON object, got {type(rec).__name__}")
    rid = rec.get("id")
    if "query" not in rec:
        return Item(line, id=rid, error="missing \"query\" field")
    q = rec["query"]
    if not isinstance(q, str):
        return Item(line, id=rid, error=f"\"query\" must be a string, got {type(q).__name__}")
    empty = empty_text_reason(q)
    if empty:  # an empty text still embeds to some vector: a confident pick for no question
        return Item(line, id=rid, error=f"\"query\" {empty}")
    clash = [k for k in rec if k in RESERVED_INPUT_KEYS]
    if clash:
        return Item(line, id=rid, error=f"input field(s) {', '.join(map(repr, clash))} would be overwritten by "
                                        "the output's own field(s) of that name; rename them in the input")
    extra = {k: v for k, v in rec.items() if k not in ("id", "query")}
    return Item(line, id=rid, query=q, extra=extra)


def iter_jsonl_items(path: Path, skip: int) -> Iterator[Item]:
    if is_stream(path):  # standard input or a FIFO: read once, as it comes
        fh = sys.stdin.buffer if is_stdio(path) else Path(path).open("rb")
        try:
            for n, raw in iter_stream_lines(fh, skip):
                yield parse_line(raw, n)
        finally:
            if not is_stdio(path):
                fh.close()
        return
    for n, raw in iter_lines(path, skip):
        yield parse_line(raw, n)


def iter_embedding_items(ids_path: Path, skip: int) -> Iterator[Item]:
    for n, raw in iter_lines(ids_path, skip):
        yield Item(n, id=raw, query=None, row=n - 1, error=None if raw.strip() else "empty id")


def chunks(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for it in items:
        chunk.append(it)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def iter_range_items(src: Path, start: int, stop: int, first_line: int, embeddings: bool) -> Iterator[Item]:
    """Parsed input lines in bytes [start, stop) of ``src``, numbered from ``first_line``.

    ``start`` must be the first byte of a line; ``stop`` the byte after a newline (or the
    file size).  Lines are split and decoded exactly as ``iter_lines`` does, so a
    partition yields the same items as the whole-file stream does for those lines.
    """
    with Path(src).open("rb") as fh:
        fh.seek(start)
        pos, n = start, first_line
        while pos < stop:
            raw = fh.readline()
            if not raw:
                break
            pos += len(raw)
            text = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
            if embeddings:
                yield Item(n, id=text, query=None, row=n - 1, error=None if text.strip() else "empty id")
            else:
                yield parse_line(text, n)
            n += 1


def resume_point(out: Path) -> int:
    """Complete lines already in ``out``; cuts a partial last line.  Checks the prefix is ours."""
    if not out.exists():
        return 0
    size = out.stat().st_size
    n, last_nl = 0, -1
    with out.open("rb") as fh:
        pos = 0
        while True:
            block = fh.read(1 << 20)
            if not block:
                break
            c = block.count(b"\n")
            if c:
                n += c
                last_nl = pos + block.rindex(b"\n")
            pos += len(block)
    if last_nl + 1 != size:
        with out.open("r+b") as fh:
            fh.truncate(last_nl + 1)
    if n:
        # the last complete record must be ours and numbered n
        start = max(0, last_nl - (1 << 22))
        with out.open("rb") as fh:
            fh.seek(start)
            tail = fh.read(last_nl - start)
        last = tail.rsplit(b"\n", 1)[-1]
        try:
            rec = json.loads(last)
            ok = isinstance(rec, dict) and rec.get("line") == n
        except (json.JSONDecodeError, UnicodeDecodeError):
            ok = False
        if not ok:
            raise OirlError(
                f"cannot resume: line {n} of the output is not record number {n} of an `oirl score` run", out, n
            )
    return n


# Characters that str.splitlines() and some JSONL readers treat as line breaks. JSON allows
# them raw inside strings (the only place json.dumps can emit them), so escaping them there
# keeps one record per line for every reader.
# (json.dumps already escapes the C0 controls among them.)
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, default=str)  # json.dumps would build one a call


def dumps(rec: dict) -> str:
    text = _ENCODER.encode(rec)
    return text if text.isascii() else text.translate(_LINE_BREAKS)  # isascii: the common case, nearly free


def _num(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def record(item: Item, cands: Candidates, idx, sc, top_k: int, full_row) -> dict:
    rec = {"line": item.line, "id": item.id}
    for k, v in item.extra.items():
        if k not in OUTPUT_KEYS:
            rec[k] = v
    b = int(idx[0])
    rec["prompt_id"] = cands.ids[b]
    rec["prompt"] = cands.texts[b]
    rec["score"] = _num(sc[0])
    if top_k > 1:
        rec["top_k"] = [{"prompt_id": cands.ids[int(i)], "score": _num(s)} for i, s in zip(idx, sc)]
    if full_row is not None:
        rec["scores"] = {pid: _num(s) for pid, s in zip(cands.ids, full_row)}
    return rec


def error_record(item: Item) -> dict:
    return {"line": item.line, "id": item.id, "error": item.error}
