"""Strict JSON-lines reading shared by every reader of a user's file.

Python's ``json`` is lenient in ways that turn into wrong answers or crashes later:
it accepts ``NaN``/``Infinity`` (and ``1e999`` becomes ``inf``), lone UTF-16
surrogates that cannot be written back as UTF-8, and it raises ``ValueError`` or
``RecursionError`` rather than ``JSONDecodeError`` for huge integers and deep
nesting.  :func:`parse_json_line` turns all of these into one ``BadLine`` with a
short reason, so each reader can make it a record-level error or an
``OirlError`` naming file and line.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Iterator

from .errors import OirlError

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class BadLine(ValueError):
    """One line that is not a usable JSON value; ``str(exc)`` says why."""


def _reject_constant(name: str):
    raise BadLine(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadLine(f"number {text[:20]} is out of range")
    return value


def _is_valid_unicode(raw: str, obj) -> bool:
    if not raw.isascii():
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes, kept as surrogate escapes by the reader
            return False
    if _SURROGATE_ESCAPE.search(raw):  # \ud83d\ude00 is a fine pair; a lone \udc80 is not
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


# One decoder for every line: json.loads with these options would build a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


try:  # msgspec parses 3-4x faster; it is stricter than the rules below on every point (it refuses
    # NaN, out-of-range numbers, lone surrogates, undecodable bytes, deep nesting), so a line it
    # takes parses to the same value, and a line it refuses goes through them for the same reason
    import msgspec

    _fast_decode = msgspec.json.Decoder().decode
except ImportError:  # pragma: no cover - msgspec is a core dependency
    _fast_decode = None


def parse_json_line(raw: str):
    """Parse one line of JSON strictly; raise :class:`BadLine` with the reason."""
    if _fast_decode is not None:
        try:
            return _fast_decode(raw)
        except Exception:  # noqa: BLE001 - any refusal: the standard parser says why (or takes a big integer)
            pass
    try:
        if raw.startswith("\ufeff"):  # what json.loads refuses before decoding
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", raw, 0)
        obj = _DECODER.decode(raw)
    except json.JSONDecodeError as exc:
        raise BadLine(f"malformed JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise BadLine("JSON is nested too deeply") from None
    except BadLine:
        raise
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise BadLine(f"not usable JSON ({str(exc).split(';')[0]})") from None
    if not _is_valid_unicode(raw, obj):
        raise BadLine("not valid UTF-8 (or holds an unpaired surrogate escape)")
    return obj


# A line longer than this (without its newline) is not read into memory: `--in /dev/zero`, or a file
# that never ends a line, would otherwise grow the process without bound. 16 MiB is far beyond any
# query record; `oirl score --max-line-bytes` changes it.
DEFAULT_MAX_LINE_BYTES = 16 << 20
LINE_TOO_LONG = None  # what the readers yield in place of the text of a line over the limit


def iter_lines(path: Path, skip: int = 0, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[tuple[int, str | None]]:
    """Yield (line number, text without its line ending) for lines after ``skip``; the text is
    ``LINE_TOO_LONG`` (None) for a line of more than ``max_line_bytes`` bytes, which is skipped, not read.

    Lines end at ``\\n`` only, as :func:`count_lines` counts them (a text-mode reader
    would also split at a lone ``\\r``).  Undecodable bytes are kept as surrogate
    escapes so :func:`parse_json_line` reports them with their line number.
    """
    with Path(path).open("rb") as fh:
        yield from iter_stream_lines(fh, skip, max_line_bytes)


def read_line(fh, max_line_bytes: int | None) -> tuple[bytes | None, int]:
    """(the next line with its newline, or None when it is over ``max_line_bytes``; bytes consumed).
    (b"", 0) at the end. Memory stays within the limit whatever the line's length."""
    if not max_line_bytes:
        raw = fh.readline()
        return raw, len(raw)
    raw = fh.readline(max_line_bytes + 1)
    if len(raw) <= max_line_bytes or raw.endswith(b"\n"):
        return raw, len(raw)
    used = len(raw)
    while not raw.endswith(b"\n"):  # skip the rest of the line a block at a time
        raw = fh.readline(1 << 20)
        if not raw:
            break
        used += len(raw)
    return None, used


def iter_stream_lines(fh, skip: int = 0, max_line_bytes: int | None = DEFAULT_MAX_LINE_BYTES
                      ) -> Iterator[tuple[int, str | None]]:
    """:func:`iter_lines` over an open binary stream (standard input, a FIFO), read once, front to back."""
    yield from iter_raw_lines(fh, skip, max_line_bytes)


def iter_raw_lines(fh, skip: int = 0, max_line_bytes: int | None = DEFAULT_MAX_LINE_BYTES):
    """:func:`iter_stream_lines`, and its return value (``StopIteration.value``) is the number of
    lines in the stream, those skipped included: a resumed run learns that its input is shorter
    than its output without a pass of its own."""
    n = 0
    while True:
        raw, used = read_line(fh, max_line_bytes)
        if not used:
            return n
        n += 1
        if n <= skip:
            continue
        if raw is None:
            yield n, LINE_TOO_LONG
            continue
        text = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
        # Editors on Windows start UTF-8 files with a byte-order mark; it is not part of the record.
        yield n, text[1:] if n == 1 and text.startswith("\ufeff") else text


def count_lines(path: Path) -> int:
    """Number of lines in ``path``: newline bytes, plus one for a last line without a newline."""
    n, last = 0, b"\n"
    with Path(path).open("rb") as fh:
        while True:
            block = fh.read(1 << 20)
            if not block:
                break
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def iter_objects(path: Path, what: str = "record") -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; a bad line is an OirlError naming file and line."""
    for lineno, line in iter_lines(path):
        if line is LINE_TOO_LONG:
            raise OirlError(f"line is longer than {DEFAULT_MAX_LINE_BYTES} bytes", path, lineno)
        if not line.strip():
            continue
        try:
            rec = parse_json_line(line)
        except BadLine as exc:
            raise OirlError(str(exc), path, lineno) from None
        if not isinstance(rec, dict):
            raise OirlError(f"a {what} must be a JSON object, got {type(rec).__name__}", path, lineno)
        yield lineno, rec
