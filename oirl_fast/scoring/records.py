"""Input lines to items, items to output records, and the resume point of a partial output."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import OirlError
from ..jsonl import DEFAULT_MAX_LINE_BYTES, LINE_TOO_LONG, BadLine, parse_json_line, read_line
from ..query_rows import BadRow, QueryFields
from .candidates import Candidates

OUTPUT_KEYS = ("line", "id", "prompt_id", "prompt", "score", "confidence", "low_confidence", "top_k", "scores", "error")
# Input fields that would collide with what oirl writes: such a line becomes an error record
# (unless the outputs go under --output-field), so a user's field is never dropped or overwritten.
RESERVED_INPUT_KEYS = tuple(k for k in OUTPUT_KEYS if k != "id")


@dataclass
class Picked:
    """The picks of n queries: ``idx`` int64 (n, k) candidate indices best first, ``scores`` (n, k),
    ``full`` (n, P) every candidate's score (only when asked for), ``confidence`` (n,) the calibrated
    success probability of each top pick (when the model has a calibrator)."""

    idx: np.ndarray
    scores: np.ndarray
    full: np.ndarray | None = None
    confidence: np.ndarray | None = None


@dataclass
class Item:
    line: int
    id: object = None
    query: str | None = None
    extra: dict = field(default_factory=dict)
    error: str | None = None
    row: int = -1  # row in the --embeddings matrix


def parse_line(raw: str | None, line: int, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
               fields: RowFields | None = None) -> Item:
    """The Item of one JSON line (``LINE_TOO_LONG`` for a line over the limit, not read)."""
    if raw is LINE_TOO_LONG:
        return Item(line, error=f"line is longer than --max-line-bytes ({max_line_bytes} bytes); not read")
    if not raw.strip():
        return Item(line, error="empty line")
    try:
        rec = parse_json_line(raw)
    except BadLine as exc:
        return Item(line, error=str(exc))
    return record_item(rec, line, fields)


@dataclass(frozen=True)
class RowFields:
    """How input rows map to items and items to output records: where the query and id are
    (:class:`~oirl_fast.query_rows.QueryFields`; None: rows kept whole in ``Item.extra``, for
    :func:`~oirl_fast.query_rows.read_rows`) and ``output_field``, the one key the outputs
    go under (None: beside the input's fields, as ever)."""

    query: QueryFields | None = QueryFields()
    output_field: str | None = None
    # the defaults (query in "query", id in "id", outputs beside them): record_item's short cut applies
    plain: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "plain", self.query is not None and self.query.default and self.output_field is None)


_DEFAULT_FIELDS = RowFields()


def record_item(rec, line: int, fields: RowFields | None = None) -> Item:
    """The Item of one input record (a parsed JSON line, a CSV or Parquet row as a dict)."""
    f = fields or _DEFAULT_FIELDS
    if f.plain and type(rec) is dict and len(rec) <= 2:
        # The common record, {"id": ..., "query": "<a letter or digit first>"}, read at a third of the cost;
        # general_item gives the same Item (tests/test_records_fast.py).
        q = rec.get("query")
        if type(q) is str and q[:1].isalnum() and (len(rec) == 1 or "id" in rec):
            return Item(line, rec.get("id"), q, {})
    return general_item(rec, line, f)


def general_item(rec, line: int, f: RowFields) -> Item:
    """:func:`record_item` for any record and fields."""
    if not isinstance(rec, dict):
        return Item(line, error=f"a record must be a JSON object, got {type(rec).__name__}")
    if f.query is None:
        return Item(line, extra=rec)
    try:
        q = f.query.query_of(rec)
    except BadRow as exc:
        return Item(line, id=exc.rid, error=str(exc))
    rid = f.query.id_of(rec)
    if f.output_field is not None:
        if f.output_field in rec:
            return Item(line, id=rid, error=f"input field {f.output_field!r} is --output-field's; give another name")
        return Item(line, id=rid, query=q, extra=rec)
    own = (f.query.id_field, *f.query.query_names())
    clash = [k for k in rec if k in OUTPUT_KEYS and k not in own]
    if clash:
        return Item(line, id=rid, error=f"input field(s) {', '.join(map(repr, clash))} would be overwritten by "
                                        "the output's own field(s) of that name; rename them in the input, or put "
                                        "the outputs under one field (--output-field)")
    extra = {k: v for k, v in rec.items() if k not in own}
    return Item(line, id=rid, query=q, extra=extra)


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
                     max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, fields: RowFields | None = None) -> Iterator[Item]:
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
                yield parse_line(text, n, max_line_bytes, fields)
            n += 1


def resume_point(out: Path, output_field: str | None = None) -> int:
    """Complete lines already in ``out``; cuts a partial last line.  Checks the prefix is ours
    (its records under ``output_field`` when the outputs go there)."""
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
            if output_field is not None and isinstance(rec, dict):
                rec = rec.get(output_field)
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


def candidate_json(cands) -> list[tuple[str, str]]:
    """(JSON of the prompt id, JSON of the prompt text) of every candidate, encoded once per job."""
    return [(_ENCODER.encode(i), _ENCODER.encode(t)) for i, t in zip(cands.ids, cands.texts)]


def pick_line(item: Item, cand_json: list[tuple[str, str]], picked, j: int, options) -> str | None:
    """The output line (without its newline) of a scored ``item`` in the common shape, written without
    building a dict: no input fields besides id and query, ``top_k`` 1, no ``scores``, no ``output_field``.
    The same bytes as ``dumps(record(...))`` (tested on random records); None for any other shape, which
    :func:`record` serves."""
    if item.extra or options.top_k != 1 or picked.full is not None or options.output_field is not None:
        return None
    b = int(picked.idx[j][0])
    score = float(picked.scores[j][0])
    pid, text = cand_json[b]
    if not math.isfinite(score):
        tail = "null}"
    elif picked.confidence is None:
        tail = f"{score!r}}}"
    else:
        conf = float(picked.confidence[j])
        if not math.isfinite(conf):
            return None  # the encoder's own error for it
        tail = f"{score!r}, \"confidence\": {conf!r}"
        if options.min_confidence is not None:
            tail += ', "low_confidence": true}' if conf < options.min_confidence else ', "low_confidence": false}'
        else:
            tail += "}"
    text = f'{{"line": {item.line}, "id": {_ENCODER.encode(item.id)}, "prompt_id": {pid}, "prompt": {text}, "score": {tail}'
    return text if text.isascii() else text.translate(_LINE_BREAKS)


def _num(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def record(item: Item, cands: Candidates, picked, j: int, options) -> dict:
    """The output record of a scored ``item``: row ``j`` of ``picked`` (a :class:`~oirl_fast.scoring.job.Picked`),
    with the fields ``options`` (a ScoreOptions) asks for."""
    idx, sc = picked.idx[j], picked.scores[j]
    out = {"line": item.line, "id": item.id}
    inner = out if options.output_field is None else {}
    if options.output_field is None:
        for k, v in item.extra.items():
            out[k] = v
    b = int(idx[0])
    inner["prompt_id"] = cands.ids[b]
    inner["prompt"] = cands.texts[b]
    inner["score"] = _num(sc[0])
    if options.top_k > 1:
        inner["top_k"] = [{"prompt_id": cands.ids[int(i)], "score": _num(s)} for i, s in zip(idx, sc)]
    if picked.full is not None:
        inner["scores"] = {pid: _num(s) for pid, s in zip(cands.ids, picked.full[j])}
    if picked.confidence is not None and inner["score"] is not None:
        inner["confidence"] = float(picked.confidence[j])
        if options.min_confidence is not None:
            inner["low_confidence"] = inner["confidence"] < options.min_confidence
    return out if options.output_field is None else {**item.extra, options.output_field: {**out, **inner}}


def error_record(item: Item, output_field: str | None = None) -> dict:
    rec = {"line": item.line, "id": item.id, "error": item.error}
    return rec if output_field is None else {output_field: rec}
