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
from ..jsonl import (DEFAULT_MAX_LINE_BYTES, LINE_TOO_LONG, BadLine, count_lines, iter_lines, iter_stream_lines,
                     parse_json_line, read_line)
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


def parse_line(raw: str | None, line: int, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Item:
    if raw is LINE_TOO_LONG:
        return Item(line, error=f"line is longer than --max-line-bytes ({max_line_bytes} bytes); not read")
    if not raw.strip():
        return Item(line, error="empty line")
    try:
        rec = parse_json_line(raw)
    except BadLine as exc:
        return Item(line, error=str(exc))
    return record_item(rec, line)


def record_item(rec, line: int) -> Item:
    """The Item of one input record (a parsed JSON line, or a Parquet row as a dict)."""
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


def iter_jsonl_items(path: Path, skip: int, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[Item]:
    """Items of a JSON-lines input (a file, standard input or a FIFO) or of a Parquet file, after ``skip``."""
    if is_stream(path):  # standard input or a FIFO: read once, as it comes
        fh = sys.stdin.buffer if is_stdio(path) else Path(path).open("rb")
        try:
            _check_stream_head(fh, path)
            for n, raw in iter_stream_lines(fh, skip, max_line_bytes):
                yield parse_line(raw, n, max_line_bytes)
        finally:
            if not is_stdio(path):
                fh.close()
        return
    if is_parquet(path):
        yield from iter_parquet_items(path, skip)
        return
    for n, raw in iter_lines(path, skip, max_line_bytes):
        yield parse_line(raw, n, max_line_bytes)


def _check_stream_head(fh, path) -> None:
    """Refuse a compressed, UTF-16 or binary stream from its first bytes (peeked, not consumed)."""
    from .inputs import sniff_input

    peek = getattr(fh, "peek", None)
    head = peek(4096)[:4096] if peek is not None else b""
    try:
        kind = sniff_input(head) if head else "jsonl"
    except ValueError as exc:
        raise OirlError(str(exc), "<stdin>" if is_stdio(path) else path) from None
    if kind == "parquet":
        raise OirlError("is Parquet: give it as a file (Parquet cannot be streamed)", "<stdin>" if is_stdio(path) else path)


def is_parquet(path) -> bool:
    try:
        with Path(path).open("rb") as fh:
            return fh.read(4) == b"PAR1"
    except OSError:
        return False


def _jsonable(value):
    """A Parquet value as JSON can write it (dates and times in ISO form); ValueError for what JSON cannot hold."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("a NaN or infinite number")
        return value
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(x, tuple) and len(x) == 2 for x in value):  # a Parquet map
            return {str(k): _jsonable(v) for k, v in value}
        return [_jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        raise ValueError("binary data")
    return str(value)  # Decimal and the like


def iter_parquet_items(path: Path, skip: int = 0, batch_rows: int = 4096) -> Iterator[Item]:
    """Items of a Parquet input, one a row (numbered from 1 like lines), after ``skip`` rows."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise OirlError(f"unreadable Parquet file ({exc})", path) from None
    n = 0
    for batch in pf.iter_batches(batch_size=batch_rows):
        if n + batch.num_rows <= skip:
            n += batch.num_rows
            continue
        for row in batch.to_pylist():
            n += 1
            if n <= skip:
                continue
            try:
                rec = {str(k): _jsonable(v) for k, v in row.items()}
            except ValueError as exc:
                yield Item(n, id=row.get("id") if isinstance(row.get("id"), (str, int)) else None,
                           error=f"row holds {exc}, which JSON cannot represent")
                continue
            yield record_item(rec, n)


def count_input_lines(path: Path) -> int:
    """Lines of a JSON-lines input, rows of a Parquet one."""
    if is_parquet(path):
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows
        except Exception as exc:  # noqa: BLE001
            raise OirlError(f"unreadable Parquet file ({exc})", path) from None
    return count_lines(path)


def iter_embedding_items(ids_path: Path, skip: int) -> Iterator[Item]:
    for n, raw in iter_lines(ids_path, skip):
        if raw is LINE_TOO_LONG:
            yield Item(n, error=f"id line is longer than {DEFAULT_MAX_LINE_BYTES} bytes")
            continue
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


def iter_range_items(src: Path, start: int, stop: int, first_line: int, embeddings: bool,
                     max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[Item]:
    """Parsed input lines in bytes [start, stop) of ``src``, numbered from ``first_line``.

    ``start`` must be the first byte of a line; ``stop`` the byte after a newline (or the
    file size).  Lines are split and decoded exactly as ``iter_lines`` does, so a
    partition yields the same items as the whole-file stream does for those lines.
    """
    with Path(src).open("rb") as fh:
        fh.seek(start)
        pos, n = start, first_line
        while pos < stop:
            raw, used = read_line(fh, max_line_bytes)
            if not used:
                break
            pos += used
            if raw is None:
                yield parse_line(LINE_TOO_LONG, n, max_line_bytes)
                n += 1
                continue
            text = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
            if embeddings:
                yield Item(n, id=text, query=None, row=n - 1, error=None if text.strip() else "empty id")
            else:
                yield parse_line(text, n, max_line_bytes)
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
