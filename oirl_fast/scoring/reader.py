"""One pass over a scoring input: its rows as :class:`~oirl_fast.scoring.records.Item` and how far it has got.

Formats, one output record per input row under the same rules (error records, resume):

* JSON lines, plain or gzip-compressed (from the first bytes), a file, standard input or a FIFO;
* CSV with a header row (``*.csv`` / ``*.csv.gz``), every cell read as its text;
* Parquet (a file);
* the ``--ids`` file of ``--embeddings``, one id a line.

Progress is counted in bytes of the input as stored (the compressed bytes of a ``.gz``), so a
progress bar needs only the file's size, never a first pass that counts its lines.
"""
from __future__ import annotations

import csv
import gzip
import io
import math
import sys
from pathlib import Path
from typing import Iterator

from ..errors import OirlError
from ..jsonl import DEFAULT_MAX_LINE_BYTES, LINE_TOO_LONG, iter_raw_lines
from ..paths import is_stdio, is_stream
from .inputs import GZIP_MAGIC, is_csv, sniff_input
from .records import Item, RowFields, parse_line, record_item



def is_parquet(path) -> bool:
    try:
        with Path(path).open("rb") as fh:
            return fh.read(4) == b"PAR1"
    except OSError:
        return False


class InputReader:
    """The items of one input, read once, front to back, after ``skip`` rows.

    ``items()`` yields them (raising OirlError when the input has fewer than ``skip`` rows: a
    resumed output longer than its input); ``position()`` is the input bytes consumed so far
    and ``total`` the input's size in bytes (None for a stream).
    """

    def __init__(self, path: Path, skip: int = 0, fields: RowFields | None = None,
                 max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, ids: bool = False):
        self.path, self.skip, self.fields, self.max_line_bytes, self.ids = Path(path), skip, fields, max_line_bytes, ids
        self.label = "<stdin>" if is_stdio(path) else str(path)
        self.total = None if is_stream(path) else self.path.stat().st_size
        self._raw = None  # the file as stored, for position()
        self._rows = self._parquet_rows = 0  # rows read and rows in all (a Parquet file's position)

    def position(self) -> int:
        """Input bytes consumed so far (as stored; a Parquet file's share of its rows read); 0 for a stream."""
        if self.total is None:
            return 0
        if self._parquet_rows:
            return self.total * self._rows // self._parquet_rows
        try:
            return self._raw.tell() if self._raw is not None else 0
        except (OSError, ValueError):  # closed at the end
            return self.total

    def items(self) -> Iterator[Item]:
        if not is_stream(self.path) and is_parquet(self.path):
            yield from self._parquet()
            return
        fh = sys.stdin.buffer if is_stdio(self.path) else self.path.open("rb")
        self._raw = fh
        try:
            head = _peek(fh)
            if not self.ids:
                check_head(head, self.label)
            if head.startswith(GZIP_MAGIC):
                fh = gzip.GzipFile(fileobj=fh, mode="rb")
            if is_csv(self.path):
                count = yield from self._csv(fh)
            else:
                count = yield from self._lines(fh)
        finally:
            if not is_stdio(self.path):
                self._raw.close()
        if count < self.skip:
            raise OirlError(f"cannot resume: the output has {self.skip} lines, the input only {count}", self.label)

    def _lines(self, fh):
        lines = iter_raw_lines(fh, self.skip, self.max_line_bytes)
        while True:
            try:
                n, raw = next(lines)
            except StopIteration as stop:
                return stop.value
            if self.ids:
                if raw is LINE_TOO_LONG:
                    yield Item(n, error=f"id line is longer than {self.max_line_bytes} bytes")
                else:
                    yield Item(n, id=raw, row=n - 1, error=None if raw.strip() else "empty id")
            else:
                yield parse_line(raw, n, self.max_line_bytes, self.fields)

    def _csv(self, fh):
        text = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="strict", newline="")
        reader = csv.reader(text)
        try:
            header = next(reader, None)
        except (UnicodeDecodeError, csv.Error) as exc:
            raise OirlError(f"unreadable CSV header ({exc})", self.label) from None
        if not header:
            return 0
        n = 0
        while True:
            try:
                row = next(reader, None)
            except UnicodeDecodeError:
                raise OirlError(f"row {n + 1} is not valid UTF-8", self.label, n + 1) from None
            except csv.Error as exc:  # an unterminated quote, a NUL: the rest cannot be split into rows
                raise OirlError(f"CSV cannot be read past row {n} ({exc})", self.label, n + 1) from None
            if row is None:
                return n
            n += 1
            if n <= self.skip:
                continue
            if len(row) != len(header):
                yield Item(n, error=f"row has {len(row)} cells, the header {len(header)}")
                continue
            yield record_item(dict(zip(header, row)), n, self.fields)

    def _parquet(self):
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(self.path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise OirlError(f"unreadable Parquet file ({exc})", self.path) from None
        self._parquet_rows = pf.metadata.num_rows
        n = 0
        for batch in pf.iter_batches(batch_size=4096):
            if n + batch.num_rows <= self.skip:
                n += batch.num_rows
                self._rows = n
                continue
            for row in batch.to_pylist():
                n += 1
                self._rows = n
                if n <= self.skip:
                    continue
                try:
                    rec = {str(k): _jsonable(v) for k, v in row.items()}
                except ValueError as exc:
                    rid = row.get("id")
                    yield Item(n, id=rid if isinstance(rid, (str, int)) else None,
                               error=f"row holds {exc}, which JSON cannot represent")
                    continue
                yield record_item(rec, n, self.fields)
        if n < self.skip:
            raise OirlError(f"cannot resume: the output has {self.skip} lines, the input only {n}", self.label)


def _peek(fh) -> bytes:
    """The first bytes of ``fh``, left in it to be read (a stream cannot seek back)."""
    peek = getattr(fh, "peek", None)
    return peek(4096)[:4096] if peek is not None else b""


def check_head(head: bytes, label: str) -> None:
    """Refuse a compressed (but gzip), UTF-16 or binary input from its first bytes (OirlError naming ``label``)."""
    if head.startswith(GZIP_MAGIC):
        try:
            head = gzip.decompress(head)
        except (OSError, EOFError, ValueError):  # a first block of a longer member: its start is enough
            head = _gunzip_head(head, label)
    try:
        kind = sniff_input(head) if head else "jsonl"
    except ValueError as exc:
        raise OirlError(str(exc), label) from None
    if kind == "parquet":
        raise OirlError("is Parquet: give it as a file (Parquet cannot be streamed)", label)


def _gunzip_head(head: bytes, label: str) -> bytes:
    import zlib

    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 4096)
    except zlib.error as exc:
        raise OirlError(f"is not a readable gzip file ({exc})", label) from None


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

