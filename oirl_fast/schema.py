"""The offline log: one table of demonstration records, stored as Parquet.

One row is one LLM answer: a query, the prompt it was asked with, and whether
the answer was correct. Imported logs (``oirl import``) and collected logs
(``oirl collect``) share this schema, so everything downstream reads either.

=========== ======== ======== ===========================================================
column      type     required meaning
=========== ======== ======== ===========================================================
dataset     string   yes      dataset name, e.g. ``gsm8k``
query_id    string   yes      unique id of the query row, e.g. ``svamp:15003``
query       string   yes      question text as sent to the LLM (before the prompt)
group       string   yes      key of the normalized question text; rows that share it
                              are the same question (repeats), kept on one side of a split
gold        string   yes      gold answer
prompt_id   string   yes      id of the prompt, unique within a prompt set
prompt      string   yes      prompt text
correct     bool     yes      whether the graded answer was right
response    string   no       the LLM's answer text
sample      int32    no       sample index when one (query, prompt) was asked several times
source      string   no       where the record came from, e.g. ``prompt-oirl/llama-2-7b-chat``
split       string   no       the source's own split (``train``/``test``), if it has one
confidence  float64  no       the LLM's self-critique confidence in [0, 1] for this answer
=========== ======== ======== ===========================================================
"""
from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_path
from .errors import OirlError
from .jsonl import iter_objects

SCHEMA_VERSION = 1

LOG_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        pa.field("group", pa.string(), nullable=False),
        pa.field("gold", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("response", pa.string()),
        pa.field("sample", pa.int32()),
        pa.field("source", pa.string()),
        pa.field("split", pa.string()),
        pa.field("confidence", pa.float64()),
    ],
    metadata={"oirl_fast.log_schema_version": str(SCHEMA_VERSION)},
)
REQUIRED = [f.name for f in LOG_SCHEMA if not f.nullable]
OPTIONAL = [f.name for f in LOG_SCHEMA if f.nullable]

_SPACE = re.compile(r"\s+")
_SPACED_PUNCT = re.compile(r"\s+([.,?!;:])")


def normalize_question(text: str) -> str:
    """Text used to decide that two queries are the same question.

    Unicode NFKC, lower case, whitespace collapsed, and the tokenized spacing of
    SVAMP/MAWPS (``candy .``) folded into plain punctuation (``candy.``).
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = _SPACED_PUNCT.sub(r"\1", text)
    return _SPACE.sub(" ", text).strip()


def group_key(text: str) -> str:
    """Stable 16-hex-digit key of the normalized question text."""
    return hashlib.sha1(normalize_question(text).encode("utf-8")).hexdigest()[:16]


QUESTION_HASH_KEY = "blake2b-64 of normalize_question(text), little-endian uint64"


def question_hashes(texts) -> "np.ndarray":
    """uint64 (n,): 8-byte BLAKE2b of each text's :func:`normalize_question`, in input order.

    A model artifact stores the sorted set of its training questions' hashes, so
    evaluation can tell which test questions the model trained on, whatever log it is given."""
    import numpy as np

    digests = b"".join(hashlib.blake2b(normalize_question(t).encode("utf-8"), digest_size=8).digest() for t in texts)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def _type_problem(field: pa.Field, col_type: pa.DataType) -> str | None:
    """Why a column of ``col_type`` cannot be ``field``, or None: the rules _check_record applies to
    JSONL values, so a Parquet log is held to the same ones (a float ``correct`` is not a verdict)."""
    t = col_type.value_type if pa.types.is_dictionary(col_type) else col_type
    if pa.types.is_null(t):
        return None  # all null: the null check decides
    if pa.types.is_string(field.type):
        ok = pa.types.is_string(t) or pa.types.is_large_string(t)
        if field.name == "gold":  # a numeric gold answer is the same answer as text (as in JSONL)
            ok = ok or pa.types.is_integer(t) or pa.types.is_floating(t)
        return None if ok else "a string"
    if pa.types.is_boolean(field.type):
        return None if pa.types.is_boolean(t) else "boolean (true/false)"
    if pa.types.is_integer(field.type):
        return None if pa.types.is_integer(t) else "an integer"
    if pa.types.is_floating(field.type):
        return None if pa.types.is_floating(t) or pa.types.is_integer(t) else "a number"
    return None


def _check_query_ids(table: pa.Table, path: str | Path, row_lines: list[int] | None = None) -> None:
    """A query_id names one query: its rows must agree on the query text and the gold answer.
    ``row_lines``: the file line of each row (JSONL), so the error names the line of the second one."""
    import pyarrow.compute as pc

    agg = table.select(["query_id", "query", "gold"]).group_by("query_id").aggregate(
        [("query", "count_distinct"), ("gold", "count_distinct")])
    for col, what in (("query", "query texts"), ("gold", "gold answers")):
        bad = pc.greater(agg.column(f"{col}_count_distinct"), 1)
        if pc.any(bad).as_py():
            qid = agg.column("query_id")[pc.index(bad, True).as_py()].as_py()
            rows = pc.indices_nonzero(pc.equal(table.column("query_id"), qid)).to_pylist()
            values = table.column(col).take(pa.array(rows)).to_pylist()
            second = next(r for r, v in zip(rows, values) if v != values[0])
            raise OirlError(f"query_id {qid!r} has two different {what} (rows {rows[0] + 1} and {second + 1}); "
                            "a query_id must name one query", path, None if row_lines is None else row_lines[second])


def conform(table: pa.Table, path: str | Path = "<table>", row_lines: list[int] | None = None) -> pa.Table:
    """Check required columns and cast ``table`` to :data:`LOG_SCHEMA` (missing optional columns become null)."""
    names = set(table.column_names)
    missing = [c for c in REQUIRED if c not in names and c != "group"]
    if missing:
        raise OirlError(f"log lacks required column(s) {', '.join(missing)}", path)
    unknown = sorted(names - set(LOG_SCHEMA.names))
    if unknown:
        raise OirlError(f"log has unknown column(s) {', '.join(unknown)}", path)
    if "group" not in names:
        try:
            queries = table.column("query").cast(pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise OirlError(f"column 'query' is not string: {exc}", path) from None
        groups = [group_key(q) for q in queries.to_pylist()]
        table = table.append_column("group", pa.array(groups, pa.string()))
    columns = []
    for field in LOG_SCHEMA:
        if field.name in names or field.name == "group":
            col = table.column(field.name)
            if not field.nullable and col.null_count:
                raise OirlError(f"column {field.name!r} has {col.null_count} null value(s)", path)
            wanted = _type_problem(field, col.type)
            if wanted:
                raise OirlError(f"column {field.name!r} must be {wanted}, got {col.type}", path)
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise OirlError(f"column {field.name!r} is not {field.type}: {exc}", path) from None
        else:
            col = pa.nulls(table.num_rows, field.type)
        columns.append(col)
    out = pa.Table.from_arrays(columns, schema=LOG_SCHEMA)
    _check_ranges(out, path)
    _check_query_ids(out, path, row_lines)
    return out


def _check_ranges(table: pa.Table, path: str | Path) -> None:
    """Values the types allow but the meaning does not: a confidence outside [0, 1] (or NaN), a negative sample."""
    import pyarrow.compute as pc

    conf = table.column("confidence")
    if conf.null_count < len(conf):
        bad = pc.invert(pc.and_(pc.greater_equal(conf, 0.0), pc.less_equal(conf, 1.0)))
        bad = pc.fill_null(bad, False)
        if pc.any(bad).as_py():
            row = pc.index(bad, True).as_py()
            raise OirlError(f"row {row + 1}: 'confidence' must be in [0, 1], got {conf[row].as_py()!r}", path)
    sample = table.column("sample")
    if sample.null_count < len(sample) and pc.min(sample).as_py() < 0:
        raise OirlError("'sample' has negative values", path)


def from_records(records: list[dict], path: str | Path = "<records>", row_lines: list[int] | None = None) -> pa.Table:
    """Build a log table from a list of dicts with the schema's keys (``row_lines``: each record's file line)."""
    if not records:
        return LOG_SCHEMA.empty_table()
    keys = set().union(*(r.keys() for r in records))
    columns = {k: [r.get(k) for r in records] for k in keys}
    try:
        table = pa.table(columns)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise OirlError(f"records do not form a table: {exc}", path) from None
    return conform(table, path, row_lines)


def read_logs(path: str | Path) -> pa.Table:
    """Read a log from Parquet (``.parquet``) or JSON lines (``.jsonl``)."""
    path = Path(path)
    if not path.is_file():
        raise OirlError("log file not found", path)
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path)
    try:
        table = pq.read_table(path, page_checksum_verification=True)
        # A corrupt file can still parse; full validation (UTF-8 included) catches it here,
        # not as a UnicodeDecodeError deep inside a later stage.
        table.validate(full=True)
        table.column_names
    except (pa.ArrowException, OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise OirlError(f"not a readable Parquet file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                        path) from None
    return conform(table, path)


def write_logs(table: pa.Table, path: str | Path) -> Path:
    """Write a log atomically, as Parquet or (for ``.jsonl``) JSON lines."""
    path = Path(path)
    if path.suffix.lower() not in (".parquet", ".jsonl"):
        raise OirlError("a log is written as .parquet or .jsonl; give a name ending with one of them", path)
    table = conform(table, path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".jsonl":
            with tmp.open("w", encoding="utf-8") as fh:
                for row in table.to_pylist():
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            # Page checksums let read_logs tell a corrupted log from a real one.
            pq.write_table(table, tmp, compression="zstd", write_page_checksum=True)
    return path


_STRING_COLUMNS = [f.name for f in LOG_SCHEMA if pa.types.is_string(f.type)]


def _check_record(rec: dict) -> str | None:
    """Why ``rec`` cannot be a log row, or None; the types the Parquet schema would enforce, per line."""
    missing = [c for c in REQUIRED if c != "group" and c not in rec]
    if missing:
        return f"record lacks {', '.join(missing)}"
    unknown = sorted(set(rec) - set(LOG_SCHEMA.names))
    if unknown:
        return f"record has unknown field(s) {', '.join(unknown)}"
    if isinstance(rec.get("gold"), (int, float)) and not isinstance(rec["gold"], bool):
        rec["gold"] = str(rec["gold"])  # a numeric gold answer is the same answer as text
    for name in _STRING_COLUMNS:
        value = rec.get(name)
        if value is None and name in OPTIONAL or name == "group" and name not in rec:
            continue
        if not isinstance(value, str):
            return f"{name!r} must be a string, got {type(value).__name__}"
    if not isinstance(rec["correct"], bool):
        return f"'correct' must be true or false, got {rec['correct']!r}"
    sample = rec.get("sample")
    if sample is not None and (isinstance(sample, bool) or not isinstance(sample, int) or not 0 <= sample < 2**31):
        return f"'sample' must be a non-negative integer, got {sample!r}"
    conf = rec.get("confidence")
    if conf is not None and (isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0.0 <= conf <= 1.0):
        return f"'confidence' must be a number in [0, 1], got {conf!r}"
    return None


def _read_jsonl(path: Path) -> pa.Table:
    records, lines = [], []
    for lineno, rec in iter_objects(path):
        problem = _check_record(rec)
        if problem:
            raise OirlError(problem, path, lineno)
        records.append(rec)
        lines.append(lineno)
    if not records:
        raise OirlError("log has no records", path)
    return from_records(records, path, lines)
