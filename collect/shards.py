"""The on-disk layout of a collection run: manifest, shards, index; resumable after kill -9.

::

    OUT/manifest.json          what is collected (model, prompt-set and query-set hashes, grader,
                               sampling, samples, ...); a run with another identity is refused
    OUT/shards/shard-NNNNNN.parquet
                               finished records in LOG_SCHEMA; each written to a temporary name
                               and renamed, never rewritten
    OUT/index.jsonl            one line per finished shard: its name, rows, tokens and request keys
                               [query_id, prompt_id, sample]; appended (and fsync'ed) after the rename
    OUT/logs.parquet           the merged log, written when every request is done
    OUT/summary.json           the run summary

Crash safety: a shard is complete once its name exists (rename is atomic); an index
line is written only after that. After a kill, ``--resume`` drops a torn last index line,
adopts a complete shard that the index does not list yet (reading its keys, not
rewriting it), removes leftover temporary files, and continues with the requests that
no shard holds. So every (query, prompt, sample) ends up exactly once.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import atomic_path, write_text
from ..errors import OirlError
from ..schema import LOG_SCHEMA, conform

FORMAT = "oirl-collect/1"
MANIFEST = "manifest.json"
INDEX = "index.jsonl"
SHARDS = "shards"
LOGS = "logs.parquet"
SUMMARY = "summary.json"
_SHARD_NAME = re.compile(r"shard-(\d{6,})\.parquet")

# Manifest fields that must match for --resume: they decide what a record means.
IDENTITY = ("format", "model", "lora", "quantization", "queries_sha256", "prompt_set_sha256", "prompt_ids",
            "grader", "samples", "sampling", "seed", "chat_template", "separator", "critique")

Key = tuple  # (query_id, prompt_id, sample) for a collection


@dataclass(frozen=True)
class Layout:
    """What a shard store holds: ``oirl collect``'s log records, or another command's (``oirl answer``'s calls).

    ``format`` is written into the manifest; ``identity``: manifest fields that must match for --resume;
    ``key_columns``: the columns identifying a record (each key at most once over all shards);
    ``conform(table, path)``: checks and casts a shard to the record schema; ``what``: the name in messages.
    """

    format: str
    identity: tuple[str, ...]
    key_columns: tuple[str, ...]
    conform: Callable[[pa.Table, str | Path], pa.Table]
    empty: Callable[[], pa.Table]
    what: str = "collection"


COLLECT = Layout(FORMAT, IDENTITY, ("query_id", "prompt_id", "sample"), conform, LOG_SCHEMA.empty_table)


@dataclass
class ShardEntry:
    """One finished shard as listed in the index."""

    shard: str
    rows: int
    tokens: int
    keys: list[Key] = field(repr=False)

    def to_json(self) -> str:
        return json.dumps({"shard": self.shard, "rows": self.rows, "tokens": self.tokens,
                           "keys": [list(k) for k in self.keys]}, ensure_ascii=False)


def record_keys(table: pa.Table, columns: tuple[str, ...] = COLLECT.key_columns) -> list[Key]:
    """The key of every row of a shard: (query_id, prompt_id, sample) for a collection."""
    return list(zip(*(table.column(c).to_pylist() for c in columns)))


class ShardStore:
    """Manifest, shards and index of one output folder.

    Use :meth:`check` (reads only: refuses a folder holding another collection) before
    loading a model, then :meth:`start` (creates the folder, writes the manifest, repairs
    after a crash), then :meth:`write_shard` per finished batch and :meth:`merged` at the end.
    """

    def __init__(self, root: str | Path, manifest: dict, layout: Layout = COLLECT):
        self.root = Path(root)
        self.layout = layout
        self.manifest = {"format": layout.format, **manifest}
        self.entries: list[ShardEntry] = []
        self.completed: set[Key] = set()

    @property
    def shard_dir(self) -> Path:
        return self.root / SHARDS

    # ------------------------------------------------------------------ checks (read-only)

    def check(self, resume: bool) -> None:
        """Refuse an output folder that holds something else; never writes."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise OirlError("--out exists and is not a folder", root)
        manifest_path = root / MANIFEST
        if manifest_path.is_file():
            try:
                old = json.loads(manifest_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise OirlError(f"unreadable collection manifest ({exc})", manifest_path) from None
            what = self.layout.what
            if not resume:
                raise OirlError(f"--out already holds a{'n' if what[0] in 'aeiou' else ''} {what} "
                                f"(model {old.get('model')!r}); pass --resume to continue it, or choose another --out",
                                root)
            diff = [k for k in self.layout.identity if old.get(k) != self.manifest.get(k)]
            if diff:
                shown = "; ".join(f"{k}: {_short(old.get(k))} there, {_short(self.manifest.get(k))} now" for k in diff)
                raise OirlError(f"--out holds records of another {what}, refusing to mix them ({shown})", root)
        elif root.is_dir() and any(root.iterdir()):
            raise OirlError(f"--out is not empty and holds no {self.layout.what} manifest; choose an empty or new "
                            "folder", root)

    # ------------------------------------------------------------------ writes

    def start(self) -> None:
        """Create the folder and manifest (first run), or load the index and repair it (resume)."""
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        if not (self.root / MANIFEST).is_file():
            write_text(self.root / MANIFEST, json.dumps(self.manifest, indent=2, ensure_ascii=False) + "\n")
        self._load_index()
        for tmp in self.shard_dir.glob(".shard-*.tmp"):  # a shard being written when the process died
            tmp.unlink()
        listed = {e.shard for e in self.entries}
        for path in sorted(self.shard_dir.glob("shard-*.parquet")):
            if path.name not in listed and _SHARD_NAME.fullmatch(path.name):
                self._adopt(path)

    def _load_index(self) -> None:
        path = self.root / INDEX
        if not path.is_file():
            return
        raw = path.read_bytes()
        good = 0  # bytes of complete, valid lines
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                rec = json.loads(line)
                entry = ShardEntry(rec["shard"], int(rec["rows"]), int(rec["tokens"]),
                                   [tuple(k) for k in rec["keys"]])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                break
            if not (self.shard_dir / entry.shard).is_file():
                raise OirlError(f"the index lists {entry.shard}, which is missing; the {self.layout.what} is "
                                "damaged", path)
            self._register(entry)
            good += len(line)
        if good < len(raw):  # a torn last line from a crash: drop it (the shard, if any, is adopted)
            with path.open("r+b") as fh:
                fh.truncate(good)

    def _adopt(self, path: Path) -> None:
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise OirlError(f"unreadable shard ({exc})", path) from None
        self._append_index(ShardEntry(path.name, table.num_rows, 0, record_keys(table, self.layout.key_columns)))

    def _register(self, entry: ShardEntry) -> None:
        dup = self.completed.intersection(entry.keys)
        if dup:
            raise OirlError(f"{entry.shard} repeats {len(dup)} request(s) of earlier shards, e.g. {sorted(dup)[0]}",
                            self.root / INDEX)
        self.entries.append(entry)
        self.completed.update(entry.keys)

    def _append_index(self, entry: ShardEntry) -> None:
        with (self.root / INDEX).open("a", encoding="utf-8") as fh:
            fh.write(entry.to_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._register(entry)

    def _next_name(self) -> str:
        numbers = [int(m.group(1)) for p in self.shard_dir.glob("shard-*.parquet")
                   if (m := _SHARD_NAME.fullmatch(p.name))]
        return f"shard-{max(numbers, default=-1) + 1:06d}.parquet"

    def write_shard(self, table: pa.Table, tokens: int) -> Path:
        """Write finished records atomically as the next shard, then list them in the index."""
        table = self.layout.conform(table, "<records>")
        keys = record_keys(table, self.layout.key_columns)
        path = self.shard_dir / self._next_name()
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        self._append_index(ShardEntry(path.name, table.num_rows, tokens, keys))
        return path

    def merged(self) -> pa.Table:
        """Every indexed shard, concatenated in index order (the layout's schema: LOG_SCHEMA for a collection)."""
        if not self.entries:
            return self.layout.empty()
        return pa.concat_tables([self.layout.conform(pq.read_table(self.shard_dir / e.shard), self.shard_dir / e.shard)
                                 for e in self.entries])

    @property
    def tokens(self) -> int:
        return sum(e.tokens for e in self.entries)


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."
