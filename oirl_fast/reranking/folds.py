"""The units of cross-fitting and the grouped folds they fall into.

A unit is one logged question of one dataset: every row of a ``(dataset, group)`` pooled
into a success rate per prompt (:func:`oirl_fast.splits.pool`). ``group`` is the key
``train`` groups by (:func:`oirl_fast.multilog.read_log_set` recomputes it across logs), so
a question that occurs in two datasets is two units with one group, and both always sit in
the same fold: no question is ever on both sides.

Folds are drawn over groups (:func:`assign_folds`). The inner folds of outer fold ``k``
are the other outer folds: the model for inner fold ``j`` of outer fold ``k`` is the one
fitted without folds ``{j, k}`` (:func:`fold_pairs`), so K outer folds need K + K(K-1)/2
fits in all, and each pair model serves two outer folds.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pyarrow as pa

from ..errors import OirlError
from ..splits import heldout_prompts, pool, prompt_catalog

UNIT_SEP = "\x1f"


@dataclass
class Units:
    """Every logged question of a log, pooled.

    datasets, query_ids, groups, texts: per unit (U,) (``query_ids``: the first of the
    question's rows); prompt_ids (P,), all prompts in log order; train_prompt_ids: those the
    model may see (held-out prompts were only logged on test questions);
    rate float64 (U, P) success rate (NaN where not logged); count int64 (U, P);
    n_rows int64 (U,): log rows behind each unit.
    """

    datasets: np.ndarray
    query_ids: np.ndarray
    groups: np.ndarray
    texts: list[str]
    prompt_ids: list[str]
    prompt_texts: list[str]
    train_prompt_ids: list[str]
    rate: np.ndarray
    count: np.ndarray
    n_rows: np.ndarray

    @property
    def n_units(self) -> int:
        return len(self.groups)

    @property
    def train_cols(self) -> np.ndarray:
        """int64: columns of ``rate`` that are training prompts."""
        return np.array([self.prompt_ids.index(p) for p in self.train_prompt_ids], dtype=np.int64)

    def logged_all(self, cols: np.ndarray) -> np.ndarray:
        """bool (U,): units logged with every prompt of ``cols``: those a best-of-N over them is scored on."""
        return (self.count[:, cols] > 0).all(axis=1)


def build_units(table: pa.Table, source=None) -> Units:
    """Pool ``table`` (a log as :func:`oirl_fast.multilog.read_log_set` returns it) into :class:`Units`."""
    if table.num_rows == 0:
        raise OirlError("the log has no rows", source)
    prompts = prompt_catalog(table)
    if len(prompts) < 2:
        raise OirlError(f"the log has {len(prompts)} prompt; re-ranking needs at least 2", source)
    heldout = set(heldout_prompts(table))
    train_ids = [p for p, _ in prompts if p not in heldout]
    if len(train_ids) < 2:
        raise OirlError(f"the log has {len(train_ids)} prompt(s) logged on training questions; re-ranking needs 2",
                        source)
    ds = table.column("dataset").to_pylist()
    grp = table.column("group").to_pylist()
    keys = [f"{d}{UNIT_SEP}{g}" for d, g in zip(ds, grp)]
    keyed = table.append_column("_unit", pa.array(keys, pa.string()))
    out = pool(keyed, "_unit", [p for p, _ in prompts])
    # pool keeps units in order of first appearance; find each unit's first row and row count the same way
    _, first, inverse, n_rows = np.unique(np.asarray(keys, dtype=object), return_index=True, return_inverse=True,
                                          return_counts=True)
    order = np.argsort(first, kind="stable")
    qids = np.asarray(table.column("query_id").to_pylist(), dtype=object)
    return Units(
        datasets=np.asarray([k.split(UNIT_SEP, 1)[0] for k in out.ids], dtype=object),
        query_ids=qids[first[order]],
        groups=np.asarray(out.groups, dtype=object),
        texts=out.texts,
        prompt_ids=[p for p, _ in prompts],
        prompt_texts=[t for _, t in prompts],
        train_prompt_ids=train_ids,
        rate=out.rate,
        count=out.count,
        n_rows=n_rows[order].astype(np.int64),
    )


def assign_folds(groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """int64 (U,): the fold of each unit; whole groups at a time, groups dealt round-robin in a seeded order,
    so fold sizes differ by one group at most."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise OirlError(f"--folds must be an integer >= 2, got {k!r}")
    uniq, inverse = np.unique(np.asarray(groups, dtype=object), return_inverse=True)
    if len(uniq) < k:
        raise OirlError(f"{k} folds need at least {k} distinct questions; the log has {len(uniq)}")
    perm = np.random.default_rng(seed).permutation(len(uniq))
    fold_of_group = np.empty(len(uniq), dtype=np.int64)
    fold_of_group[perm] = np.arange(len(uniq)) % k
    return fold_of_group[inverse]


def fold_pairs(k: int) -> list[tuple[int, int]]:
    """The (j, k) pairs, j < k, whose pair models the inner cross-validation uses."""
    return list(combinations(range(k), 2))


def train_mask(folds: np.ndarray, *excluded: int) -> np.ndarray:
    """bool (U,): units outside the ``excluded`` folds."""
    return ~np.isin(folds, list(excluded))
