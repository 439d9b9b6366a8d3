"""Input rows to (id, query text): the one mapping ``oirl score``, ``oirl rerank`` and ``oirl answer`` share.

Benchmark files name their fields as they like: GSM8K's ``question``, SVAMP's ``Body`` and
``Ques``. :class:`QueryFields` says where a row's query and id are:

* ``query_field`` (default ``query``): the field holding the query text;
* ``template`` (instead of ``query_field``): the query built from several fields, e.g.
  ``"{Body} {Ques}"`` (Python format fields; ``{{`` and ``}}`` for literal braces);
* ``id_field`` (default ``id``): the field holding the row's id (a row without one has id null).

A row whose query is missing, not a string, or empty gets a one-line reason instead.
"""
from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .embed import empty_text_reason
from .errors import OirlError


class BadRow(ValueError):
    """A row that has no usable query; ``str(exc)`` says why, ``rid`` is its id (or None)."""

    def __init__(self, message: str, rid=None):
        super().__init__(message)
        self.rid = rid


@dataclass(frozen=True)
class QueryFields:
    """Where a row's query text and id are; see the module doc."""

    query_field: str = "query"
    id_field: str = "id"
    template: str | None = None
    names: tuple = field(default=(), init=False, repr=False, compare=False)  # the template's fields

    def __post_init__(self):
        for name in ("query_field", "id_field"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise OirlError(f"--{name.replace('_', '-')} must be a field name, got {value!r}")
        names: tuple = ()
        if self.template is not None:
            try:
                parsed = list(string.Formatter().parse(self.template))
            except ValueError as exc:
                raise OirlError(f"--template {self.template!r} is not a format string ({exc})") from None
            named = [(n, spec, conv) for _, n, spec, conv in parsed if n is not None]
            names = tuple(n for n, _, _ in named)
            if not names or any(not n or n.isdigit() or spec or conv or any(c in n for c in ".[]")
                                for n, spec, conv in named):
                raise OirlError(f"--template {self.template!r} must name input fields in braces, e.g. "
                                "\"{Body} {Question}\" (no positional {}, attributes, indexes or format specs)")
        object.__setattr__(self, "names", names)

    @property
    def default(self) -> bool:
        return self.query_field == "query" and self.id_field == "id" and self.template is None

    def query_names(self) -> tuple[str, ...]:
        """The fields the query text comes from."""
        return self.names if self.template is not None else (self.query_field,)

    def id_of(self, rec: dict):
        return rec.get(self.id_field)

    def query_of(self, rec: dict) -> str:
        """The query text of ``rec`` (a dict); :class:`BadRow` saying why there is none."""
        rid = rec.get(self.id_field)
        for name in self.query_names():
            if name not in rec:
                raise BadRow(f"missing \"{name}\" field", rid)
            if not isinstance(rec[name], str):
                raise BadRow(f"\"{name}\" must be a string, got {type(rec[name]).__name__}", rid)
        if self.template is None:
            q = rec[self.query_field]
        else:
            q = self.template.format_map({n: rec[n] for n in self.names})
        empty = empty_text_reason(q)
        if empty:  # an empty text still embeds to some vector: a confident pick for no question
            raise BadRow(f"\"{self.query_field if self.template is None else 'query'}\" {empty}", rid)
        return q


def read_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(row number from 1, row as a dict) of a JSON-lines (plain or gzip), CSV (``*.csv``, ``*.csv.gz``;
    every cell its text) or Parquet file; a row that is not an object is an OirlError naming the file
    and the row, for the commands that take a whole file or nothing (``oirl answer``)."""
    from .scoring.reader import InputReader
    from .scoring.records import RowFields

    for item in InputReader(Path(path), fields=RowFields(query=None)).items():
        if item.error == "empty line":  # a blank line holds no row
            continue
        if item.error is not None:
            raise OirlError(item.error, path, item.line)
        yield item.line, item.extra


FIELD_CHECK_ROWS = 100  # rows a file may open with (blank, malformed) before its first record


def check_named_fields(path: str | Path, fields: QueryFields, max_line_bytes: int | None = None) -> None:
    """Refuse, before anything is scored, a ``--query-field`` or ``--template`` naming fields that the
    first record of ``path`` (a JSON-lines, CSV or Parquet file) lacks: every row would become an error
    record, and the run would exit 0. The default ``query`` field is not checked (a file of error records
    is what a file without it has always given), nor rows after the first record, which keep their own
    error records. OirlError naming the file and the record's line, listing the fields it has."""
    if fields.template is None and fields.query_field == "query":
        return
    import itertools

    from .jsonl import DEFAULT_MAX_LINE_BYTES
    from .scoring.reader import InputReader
    from .scoring.records import RowFields

    reader = InputReader(Path(path), fields=RowFields(query=None), max_line_bytes=max_line_bytes or DEFAULT_MAX_LINE_BYTES)
    for item in itertools.islice(reader.items(), FIELD_CHECK_ROWS):
        if item.error is not None:
            continue
        missing = [n for n in fields.query_names() if n not in item.extra]
        if missing:
            keys = list(item.extra)
            has = ", ".join(map(repr, keys[:12])) + (", ..." if len(keys) > 12 else "") if keys else "none"
            option = f"--template {fields.template!r}" if fields.template is not None else \
                f"--query-field {fields.query_field!r}"
            raise OirlError(f"{option} names {', '.join(map(repr, missing))}, which the first record lacks "
                            f"(its fields: {has}); name the field(s) holding the query text", path, item.line)
        return


def read_logs_as(paths, fields: QueryFields):
    """One log table (as :func:`oirl_fast.multilog.read_log_set` reads it) from log files whose query text
    and query id sit in other fields: ``fields`` names them (their fields become the log's ``query`` and
    ``query_id``; a row without an id gets one from its query text, so a question's rows share it). The
    files are JSON lines (plain or gzip), CSV or Parquet, checked against the log schema as ever."""
    import hashlib

    from .multilog import check_prompts, check_query_ids, log_files, regroup_across
    from .schema import from_records

    own = set(fields.query_names()) | {fields.id_field}
    tables = []
    files = log_files([paths] if isinstance(paths, (str, Path)) else list(paths))
    for f in files:
        records, lines = [], []
        for line, rec in read_rows(f):
            try:
                query = fields.query_of(rec)
            except BadRow as exc:
                raise OirlError(str(exc), f, line) from None
            rid = fields.id_of(rec)
            qid = str(rid) if rid is not None else "q-" + hashlib.sha256(query.encode("utf-8")).hexdigest()[:16]
            records.append({**{k: v for k, v in rec.items() if k not in own}, "query": query, "query_id": qid})
            lines.append(line)
        tables.append(from_records(records, f, lines))
    if len(tables) == 1:
        return tables[0]
    check_prompts(tables, files)
    check_query_ids(tables, files)
    return regroup_across(tables)
