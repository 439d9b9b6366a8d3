"""Scoring inputs: the JSONL or --embeddings/--ids source, its checks, and the job's path arguments."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import OirlError
from ..jsonl import count_lines
from ..paths import is_stream
from .records import Item

SNIFF_BYTES = 4096
PARQUET_MAGIC = b"PAR1"
GZIP_MAGIC = b"\x1f\x8b"  # read as it is (decompressed on the fly), unlike the other compressions
_COMPRESSED = ((GZIP_MAGIC, "gzip", "zcat"), (b"\xfd7zXZ\x00", "xz", "xzcat"), (b"\x28\xb5\x2f\xfd", "zstd", "zstdcat"),
               (b"BZh", "bzip2", "bzcat"))
_OTHER = ((b"PK\x03\x04", "a zip archive"), (b"\x93NUMPY", "a .npy array (give it as --embeddings, with --ids)"),
          (b"\x89PNG", "a PNG image"), (b"%PDF", "a PDF document"), (b"SQLite format 3\x00", "an SQLite database"))


def sniff_input(head: bytes) -> str:
    """The format of an input from its first bytes: ``"parquet"`` or ``"jsonl"``; ValueError saying what
    it is for a file that is neither (compressed, UTF-16/32 text, another binary format)."""
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    for magic, kind, cat in _COMPRESSED:
        if head.startswith(magic) and (kind != "bzip2" or head[3:4].isdigit()):
            raise ValueError(f"is {kind}-compressed, not JSON lines; decompress it first, or stream it: "
                             f"{cat} FILE | oirl score --in - ...")
    for magic, kind in _OTHER:
        if head.startswith(magic):
            raise ValueError(f"is {kind}, not JSON lines")
    odd, even = head[1::2][:32], head[0::2][:32]
    if head.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")) or (len(head) >= 64 and (
            (odd.count(0) > 0.75 * len(odd) and even.count(0) < 0.25 * len(even))
            or (even.count(0) > 0.75 * len(even) and odd.count(0) < 0.25 * len(odd)))):
        raise ValueError("is UTF-16 or UTF-32 text; convert it to UTF-8 (iconv -f UTF-16 -t UTF-8 FILE)")
    # A full first block of which a quarter or more is NUL bytes: a binary file (/dev/zero, an image).
    # Lines that merely hold a NUL are lines to answer, each with its error record.
    if len(head) >= SNIFF_BYTES and head.count(0) > len(head) // 4:
        raise ValueError("holds NUL bytes: a binary file, not UTF-8 JSON lines")
    return "jsonl"


def input_format(path: str | Path) -> str:
    """:func:`sniff_input` of a regular file's first bytes (decompressed for a gzip file), the error
    as an OirlError naming the file: ``"parquet"``, ``"jsonl"`` or ``"gzip"`` (gzip-compressed lines)."""
    try:
        with Path(path).open("rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError as exc:
        raise OirlError(f"cannot read ({exc.strerror or exc})", path) from None
    if head.startswith(GZIP_MAGIC):
        from .reader import check_head

        check_head(head, str(path))
        return "gzip"
    try:
        return sniff_input(head)
    except ValueError as exc:
        raise OirlError(str(exc), path) from None


def strict_check(items: Iterator[Item], where: Path, emb: np.ndarray | None) -> None:
    first_nan = None
    if emb is not None:
        for a in range(0, len(emb), 1 << 16):
            bad = np.flatnonzero(~np.isfinite(np.asarray(emb[a : a + (1 << 16)], dtype=np.float32)).all(axis=1))
            if len(bad):
                first_nan = a + int(bad[0])
                break
    for it in items:
        if it.error is None and first_nan is not None and it.row == first_nan:
            it.error = "query embedding contains NaN or infinity"
        if it.error is not None:
            raise OirlError(it.error, where, it.line)


class NpyRows:
    """Rows of a 2-D ``.npy`` file, read from disk only when asked for.

    A memory map would do the same with less code, but every page it touches stays
    in the process's resident set, so peak memory would grow with the input file;
    reading just the rows of each chunk keeps it bounded by the chunk size.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with self.path.open("rb") as fh:
            try:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            # numpy's header parser raises tokenize and syntax errors too on a damaged header
            except Exception as exc:  # noqa: BLE001
                raise ValueError(f"not a .npy header ({exc})") from None
            self.offset = fh.tell()
        if dtype.hasobject:
            raise ValueError("object arrays are not accepted (no pickle)")
        # float32 is read as is; float16 and float64 are rounded to the nearest float32 (float16
        # exactly; a float64 beyond float32's range becomes inf, so its row gets an error record);
        # integers and anything else are refused: they are not embeddings.
        if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
            raise ValueError(f"embeddings must be float32 (or float16/float64, converted to float32), got dtype {dtype}")
        if fortran and len(shape) == 2 and shape[0] > 1 and shape[1] > 1:
            raise ValueError("Fortran-ordered arrays are not supported; save with np.save(np.ascontiguousarray(a))")
        self.shape, self.dtype = tuple(shape), dtype
        self.ndim = len(shape)
        if self.ndim == 2:
            self.row_bytes = shape[1] * dtype.itemsize
            expected = self.offset + shape[0] * self.row_bytes
            if self.path.stat().st_size < expected:
                raise ValueError(f"file is truncated: {self.path.stat().st_size} bytes, the header promises {expected}")

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, start: int, stop: int) -> np.ndarray:
        with self.path.open("rb") as fh:
            fh.seek(self.offset + start * self.row_bytes)
            buf = fh.read((stop - start) * self.row_bytes)
        return np.frombuffer(buf, dtype=self.dtype).reshape(stop - start, self.shape[1])

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            return self._read(start, max(start, stop))[::step]
        rows = np.asarray(index, dtype=np.int64)
        if rows.size == 0:
            return np.empty((0, self.shape[1]), self.dtype)
        lo, hi = int(rows.min()), int(rows.max()) + 1  # a chunk's rows are consecutive
        return self._read(lo, hi)[rows - lo]


def open_input(in_path, embeddings=None, ids=None) -> tuple[Path, "NpyRows | None"]:
    """(line source, embedding rows or None): the input, or the ids file beside ``embeddings``
    (a :class:`~oirl_fast.scoring.request.Source`'s fields, checked to go together).

    Raises OirlError for a missing, empty or mismatched input, before anything is written."""
    emb_matrix = None
    if embeddings is not None:
        src = Path(ids)
        emb_path = Path(embeddings)
        if not emb_path.is_file():
            raise OirlError("embeddings file not found", emb_path)
        if not src.is_file():
            raise OirlError("ids file not found", src)
        try:
            emb_matrix = NpyRows(emb_path)
        except (ValueError, OSError) as exc:
            raise OirlError(f"not a readable .npy file ({exc})", emb_path) from None
        if emb_matrix.ndim != 2:
            raise OirlError(f"embeddings must be a 2-D array, got shape {emb_matrix.shape}", emb_path)
        n_ids = count_lines(src)
        if n_ids != len(emb_matrix):
            raise OirlError(f"{n_ids} ids but {len(emb_matrix)} embedding rows", src)
    else:
        src = Path(in_path)
        if is_stream(src):  # "-" (standard input) or a FIFO: streamed, never stat'ed for a size
            return src, None
        if src.is_dir():
            raise OirlError("input is a folder; give a JSONL file (or --engine dask for a folder of shards)", src)
        if not src.is_file():
            raise OirlError("input file not found", src)
    if src.stat().st_size == 0:
        raise OirlError("input file is empty", src)
    if emb_matrix is None and not is_csv(src):
        input_format(src)  # an xz, UTF-16 or other binary file is refused here, before anything is written
    return src, emb_matrix


def is_csv(path) -> bool:
    """A CSV input (read with its header row), by its name: ``*.csv`` or ``*.csv.gz``."""
    return not is_stream(path) and str(path).lower().endswith((".csv", ".csv.gz"))
