"""Several logs as one training set: prompts matched, questions grouped across logs.

``read_log_set(paths)`` reads one or more logs (files, or folders of ``*.parquet`` /
``*.jsonl`` logs) into one table:

* prompts are matched by id *and* text: one id with two texts, or one text under two
  ids, in different files is refused (naming both files), because the model would
  otherwise learn two prompts as one or one prompt as two;
* one query id with two different question texts in different files is refused too
  (shards of one log may share query ids, different logs must not reuse them);
* ``group`` is recomputed across all logs: rows whose questions have the same
  normalized text (:func:`oirl_fast.schema.normalize_question`) get one group, and a
  log's own groups are kept together, so no question sits on both sides of a split even
  when it occurs in two benchmarks (MAWPS questions reappear in SVAMP's logs).

A single file is returned exactly as :func:`oirl_fast.schema.read_logs` reads it, so
models trained on one log rebuild the same split as before.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from .errors import OirlError
from .paths import LOG_SUFFIXES, expand_files
from .schema import normalize_question, read_logs

def log_files(paths: Sequence[str | Path]) -> list[Path]:
    """Log files named by ``paths``: files as given, folders' ``*.parquet`` / ``*.jsonl`` files and
    quoted globs in name order; each file once (by identity)."""
    files = expand_files(paths, LOG_SUFFIXES, "log")
    if not files:
        raise OirlError("no log given")
    seen, unique = set(), []
    for f in files:
        st = f.stat()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            unique.append(f)
    return unique


def read_log_set(paths: Sequence[str | Path] | str | Path) -> pa.Table:
    """One log table from one or more logs; see the module docstring for what is checked and regrouped."""
    files = log_files([paths] if isinstance(paths, (str, Path)) else list(paths))
    if len(files) == 1:
        return read_logs(files[0])
    tables = [read_logs(f) for f in files]
    check_prompts(tables, files)
    check_query_ids(tables, files)
    return regroup_across(tables)


def distinct_texts(table: pa.Table) -> list[str]:
    """Every distinct query and prompt text of a log, sorted: what embedding the log takes."""
    return sorted(set(table.column("query").to_pylist()) | set(table.column("prompt").to_pylist()))


def check_prompts(tables: Sequence[pa.Table], files: Sequence[Path]) -> None:
    """Refuse one prompt id with two texts, or one prompt text under two ids, across the logs."""
    by_id: dict[str, tuple[str, Path]] = {}
    by_text: dict[str, tuple[str, Path]] = {}
    for table, f in zip(tables, files):
        pairs = set(zip(table.column("prompt_id").to_pylist(), table.column("prompt").to_pylist()))
        for pid, text in sorted(pairs):
            if pid in by_id and by_id[pid][0] != text:
                raise OirlError(f"prompt {pid!r} has text {by_id[pid][0]!r} in {by_id[pid][1]} but {text!r} in {f}; "
                                "prompts are matched by id and text")
            if text in by_text and by_text[text][0] != pid:
                raise OirlError(f"prompt text {text!r} has id {by_text[text][0]!r} in {by_text[text][1]} but {pid!r} "
                                f"in {f}; prompts are matched by id and text")
            by_id.setdefault(pid, (text, f))
            by_text.setdefault(text, (pid, f))


def check_query_ids(tables: Sequence[pa.Table], files: Sequence[Path]) -> None:
    """Refuse a query id that names different question texts in two logs."""
    seen: dict[str, tuple[str, Path]] = {}
    for table, f in zip(tables, files):
        for qid, text in set(zip(table.column("query_id").to_pylist(), table.column("query").to_pylist())):
            if qid in seen and seen[qid][0] != text and seen[qid][1] != f:
                raise OirlError(f"query id {qid!r} names different questions in {seen[qid][1]} and {f}; "
                                "give the logs distinct query ids")
            seen.setdefault(qid, (text, f))


def regroup_across(tables: Sequence[pa.Table]) -> pa.Table:
    """Concatenate logs and recompute ``group`` so equal normalized questions share one group across them.

    A group is a connected set of (log, original group) keys and normalized question
    texts; its new key is the 16-hex SHA-1 of its smallest normalized text, which is
    :func:`oirl_fast.schema.group_key` of the question for the usual one-text groups.
    """
    parent: dict = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a, b):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    norm: dict[str, str] = {}
    row_keys = []
    for i, table in enumerate(tables):
        groups = table.column("group").to_pylist()
        queries = table.column("query").to_pylist()
        keys = [("g", i, g) for g in groups]
        for key, q in set(zip(keys, queries)):
            n = norm.get(q)
            if n is None:
                n = norm[q] = normalize_question(q)
            union(key, ("t", n))
        row_keys.append(keys)
    # Every component holds at least one text node; label it by its smallest text.
    smallest: dict = {}
    for node in list(parent):
        if node[0] == "t":
            root = find(node)
            if root not in smallest or node[1] < smallest[root]:
                smallest[root] = node[1]
    label = {root: hashlib.sha1(text.encode("utf-8")).hexdigest()[:16] for root, text in smallest.items()}
    out = []
    for table, keys in zip(tables, row_keys):
        new = pa.array([label[find(k)] for k in keys], pa.string())
        out.append(table.set_column(table.schema.get_field_index("group"), "group", new))
    return pa.concat_tables(out)


def datasets_of(table: pa.Table) -> list[str]:
    """Distinct values of ``dataset``, in order of first appearance."""
    return list(dict.fromkeys(table.column("dataset").to_pylist()))


def leakage_by_dataset(test_groups: Sequence[str], train: pa.Table) -> dict[str, int]:
    """How many test units (their question ``test_groups``, one per unit) occur in each dataset's training rows."""
    out = {}
    for ds in pc.unique(train.column("dataset")).to_pylist():
        seen = set(pc.unique(train.filter(pc.equal(train.column("dataset"), ds)).column("group")).to_pylist())
        out[ds] = sum(g in seen for g in test_groups)
    return out
