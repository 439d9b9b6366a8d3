"""Partitions of whole input lines for the Dask runner, the parts folder's manifest, and the merge."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from ..atomic import atomic_path, write_text
from ..errors import OirlError
from ..paths import expand_files
from ..train.artifact import file_sha256

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "oirl-score-parts"
MANIFEST_VERSION = 1
# Default partition size when --partitions is not given (plus at least 4 per worker).
TARGET_PARTITION_BYTES = 64 << 20


@dataclass
class Partition:
    index: int
    file: str
    start: int  # first byte (start of a line)
    stop: int  # byte after the last line
    first_line: int  # global line number of the first line (1-based, over all input files)
    lines: int

    @property
    def part(self) -> str:
        return f"part-{self.index:05d}.jsonl"


def expand_inputs(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Input files: one file, a folder (its ``*.jsonl`` files), a glob, or a list of those; name order."""
    files = expand_files(inputs, (".jsonl",), "input")
    seen = set()
    for f in files:
        key = f.resolve()
        if key in seen:
            raise OirlError("input file given twice", f)
        seen.add(key)
    return files


def line_cuts(path: Path, parts: int, start: int = 0, count_all: bool = True) -> tuple[list[int], list[int], int]:
    """Cut bytes [``start``, end) of ``path`` (``start`` a line start) into about ``parts`` byte ranges at line starts.

    Returns (cut offsets starting with ``start``, lines from ``start`` to each cut, lines from ``start`` to the
    end); one pass over the bytes counting newlines. ``count_all=False`` stops at the last cut (the total is
    then None): the local workers need no more."""
    size = path.stat().st_size
    targets = [start + (size - start) * k // parts for k in range(1, parts)]
    cuts, before = [start], [0]
    pos, nl, ti, last = start, 0, 0, b"\n"
    with path.open("rb") as fh:
        fh.seek(start)
        while count_all or ti < len(targets):
            block = fh.read(1 << 22)
            if not block:
                break
            end = pos + len(block)
            rel = 0
            while ti < len(targets) and targets[ti] < end:
                r = max(targets[ti] - pos, rel)
                j = block.find(b"\n", r) if r < len(block) else -1
                if j < 0:
                    targets[ti] = end  # the line goes on in the next block
                    break
                cut = pos + j + 1
                if cut > cuts[-1] and cut < size:
                    cuts.append(cut)
                    before.append(nl + block.count(b"\n", 0, j + 1))
                ti += 1
                rel = j + 1
            nl += block.count(b"\n")
            last = block[-1:]
            pos = end
    if not count_all:
        return cuts, before, None
    total = nl + (1 if size > start and last != b"\n" else 0)
    return cuts, before, total


def line_offset(path: Path, lines: int) -> int | None:
    """The byte offset of the start of line ``lines + 1`` of ``path`` (after its first ``lines`` lines);
    None when the file has fewer lines (or as many, the last without a newline)."""
    if lines <= 0:
        return 0
    pos, seen = 0, 0
    with path.open("rb") as fh:
        while True:
            block = fh.read(1 << 22)
            if not block:
                return None
            n = block.count(b"\n")
            if seen + n >= lines:
                j = -1
                for _ in range(lines - seen):
                    j = block.index(b"\n", j + 1)
                return pos + j + 1
            seen += n
            pos += len(block)


def plan_partitions(files: Sequence[Path], partitions: int | None, workers: int = 1) -> list[Partition]:
    """Partitions of whole lines over ``files`` (each file at least one), about equal in bytes."""
    sizes = [f.stat().st_size for f in files]
    total = sum(sizes)
    if partitions is None:
        partitions = max(4 * workers, -(-total // TARGET_PARTITION_BYTES))
    if partitions < 1:
        raise OirlError(f"--partitions must be at least 1, got {partitions}")
    out: list[Partition] = []
    line0 = 1
    for f, size in zip(files, sizes):
        if size == 0:
            continue
        k = max(1, round(partitions * size / total)) if total else 1
        cuts, before, n_lines = line_cuts(f, k)
        bounds = cuts + [size]
        counts = [b - a for a, b in zip(before, before[1:] + [n_lines])]
        for i in range(len(cuts)):
            out.append(Partition(len(out), str(f), bounds[i], bounds[i + 1], line0 + before[i], counts[i]))
        line0 += n_lines
    if not out:
        raise OirlError("input file is empty", files[0] if len(files) == 1 else None)
    return out


class PartsManifest:
    def __init__(self, path: Path, signature: dict, partitions: list[Partition]):
        self.path = path
        self.data = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "complete": False,
                     "job": signature, "partitions": [{**asdict(p), "part": p.part, "status": "pending"}
                                                      for p in partitions]}
        self._last = 0.0

    @classmethod
    def read(cls, path: Path) -> dict | None:
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise OirlError(f"unreadable manifest ({exc}); remove the parts folder to start again", path) from None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise OirlError("not an `oirl score --engine dask` manifest", path)
        return data

    def update(self, rec: dict) -> None:
        self.data["partitions"][rec["index"]] = rec

    def save(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= 1.0:
            write_text(self.path, json.dumps(self.data, indent=1, ensure_ascii=False))
            self._last = now


def part_intact(parts_dir: Path, rec: dict) -> bool:
    p = parts_dir / rec["part"]
    return (rec.get("status") == "done" and p.is_file() and p.stat().st_size == rec.get("bytes")
            and file_sha256(p) == rec.get("sha256"))


def clear_parts(parts_dir: Path) -> None:
    for p in list(parts_dir.glob("part-*.jsonl")) + list(parts_dir.glob(".part-*.tmp")) + \
            [parts_dir / MANIFEST, parts_dir / "candidates.npz"]:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def merge_parts(parts_dir: Path, records: list[dict], out: Path) -> int:
    """Concatenate the part files in input order into ``out`` (atomically), checking each checksum."""
    n = 0
    with atomic_path(out) as tmp:
        with tmp.open("wb") as dst:
            for rec in records:
                h = hashlib.sha256()
                with (parts_dir / rec["part"]).open("rb") as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        h.update(block)
                        dst.write(block)
                if h.hexdigest() != rec["sha256"]:
                    raise OirlError("part file changed since it was written; rerun with --resume", parts_dir / rec["part"])
                n += rec["lines"]
            dst.flush()
            os.fsync(dst.fileno())
    return n
