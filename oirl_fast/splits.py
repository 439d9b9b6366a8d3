"""Train/test protocols and pooling of log rows into (unit, prompt) outcome matrices.

``published``: the source's own split (GSM8K train/test; SVAMP rows < 15000 vs the
rest; MAWPS rows < 6000 vs the rest). Test units are single rows, as published.
On SVAMP and MAWPS every test question also occurs in training under this split.

``grouped``: whole questions (rows sharing a ``group`` key) go to one side.
Test groups are drawn among the groups that have rows in the source's test split
(only those were logged with the held-out prompts); each test question is one
unit whose outcome per prompt is the success rate over its repeated rows.

``leave-one-dataset-out``: transfer to a benchmark without logs. The test rows are every
row of ``heldout_dataset``; the training rows are the other datasets' rows, minus every
row whose question (``group``) also occurs in the held-out dataset (see
:func:`excluded_mask`). Read several logs with :func:`oirl_fast.multilog.read_log_set`
so that ``group`` keys the normalized question text across all of them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import OirlError

LODO = "leave-one-dataset-out"
PROTOCOLS = ("published", "grouped", LODO)


@dataclass(frozen=True)
class Protocol:
    name: str = "grouped"
    test_fraction: float = 0.25
    seed: int = 0
    heldout_dataset: str | None = None  # leave-one-dataset-out: the dataset tested on

    def __post_init__(self):
        if self.name not in PROTOCOLS:
            raise OirlError(f"unknown protocol {self.name!r}; use one of {', '.join(PROTOCOLS)}")
        if not 0.0 < self.test_fraction < 1.0:
            raise OirlError(f"test fraction must be in (0, 1), got {self.test_fraction}")
        if (self.name == LODO) != (self.heldout_dataset is not None):
            raise OirlError(f"a held-out dataset goes with the {LODO!r} protocol, and that protocol needs one "
                            "(--heldout-dataset)")

    @property
    def test_unit(self) -> str:
        return "query_id" if self.name == "published" else "group"

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["heldout_dataset"] is None:  # artifacts of the other protocols keep their old metadata
            del d["heldout_dataset"]
        return d


def holdout_mask(table: pa.Table, protocol: Protocol) -> np.ndarray:
    """bool (n_rows,): which rows are test rows under ``protocol``."""
    if protocol.name == LODO:

        names = pc.unique(table.column("dataset")).to_pylist()
        if protocol.heldout_dataset not in names:
            raise OirlError(f"held-out dataset {protocol.heldout_dataset!r} is not in the log(s), which hold "
                            f"{', '.join(sorted(names))}")
        return pc.equal(table.column("dataset"), protocol.heldout_dataset).to_numpy(zero_copy_only=False)
    split = np.asarray(table.column("split").to_numpy(zero_copy_only=False), dtype=object)
    has_split = np.array([s is not None for s in split])
    if protocol.name == "published":
        if not has_split.all():
            raise OirlError("the 'published' protocol needs the log's 'split' column on every row; use 'grouped'")
        return split == "test"
    groups = np.asarray(table.column("group").to_numpy(zero_copy_only=False), dtype=object)
    all_groups = np.unique(groups)
    eligible = np.unique(groups[split == "test"]) if (split == "test").any() else all_groups
    n_test = min(int(round(protocol.test_fraction * len(all_groups))), len(eligible))
    rng = np.random.default_rng(protocol.seed)
    chosen = rng.choice(eligible, size=n_test, replace=False) if n_test < len(eligible) else eligible
    return np.isin(groups, chosen)


def excluded_mask(table: pa.Table, protocol: Protocol) -> np.ndarray:
    """bool (n_rows,): rows on neither side. Under leave-one-dataset-out, every row of another
    dataset whose question also occurs in the held-out dataset: training on it would be
    training on a test question. All False under the other protocols."""
    if protocol.name != LODO:
        return np.zeros(table.num_rows, dtype=bool)

    is_test = holdout_mask(table, protocol)
    test_groups = pc.unique(table.column("group").filter(pa.array(is_test)))
    # Hash lookups: np.isin on object arrays compares every row with every test question.
    return ~is_test & pc.is_in(table.column("group"), value_set=test_groups).to_numpy(zero_copy_only=False)


def heldout_prompts(table: pa.Table) -> list[str]:
    """Prompts never logged on a source-train row: the ones a model must score unseen."""
    split = np.asarray(table.column("split").to_numpy(zero_copy_only=False), dtype=object)
    prompt = np.asarray(table.column("prompt_id").to_numpy(zero_copy_only=False), dtype=object)
    if not (split == "train").any():
        return []
    seen = set(prompt[split == "train"].tolist())
    return sorted(set(prompt.tolist()) - seen, key=_prompt_order(table))


def prompt_catalog(table: pa.Table) -> list[tuple[str, str]]:
    """(prompt_id, text) of every prompt in the log, in order of first appearance."""
    ids = table.column("prompt_id").to_pylist()
    texts = table.column("prompt").to_pylist()
    seen: dict[str, str] = {}
    for i, t in zip(ids, texts):
        if i not in seen:
            seen[i] = t
        elif seen[i] != t:
            raise OirlError(f"prompt id {i!r} has two different texts in the log")
    return list(seen.items())


def _prompt_order(table: pa.Table):
    order = {pid: k for k, (pid, _) in enumerate(prompt_catalog(table))}
    return lambda pid: order[pid]


@dataclass
class Outcomes:
    """Observed outcomes pooled per (unit, prompt).

    ids, texts, groups: per unit (U,); prompt_ids: (P,);
    rate: float64 (U, P) success rate, NaN where the prompt was not logged;
    count: int64 (U, P) samples behind each rate; confidence: float64 (U, P) mean
    self-critique confidence, NaN where absent.
    """

    ids: list[str]
    texts: list[str]
    groups: list[str]
    prompt_ids: list[str]
    rate: np.ndarray
    count: np.ndarray
    confidence: np.ndarray

    @property
    def n_units(self) -> int:
        return len(self.ids)

    def columns(self, prompt_ids: list[str]) -> "Outcomes":
        idx = [self.prompt_ids.index(p) for p in prompt_ids]
        return Outcomes(self.ids, self.texts, self.groups, list(prompt_ids), self.rate[:, idx], self.count[:, idx], self.confidence[:, idx])


def pool(table: pa.Table, unit: str, prompt_ids: list[str] | None = None) -> Outcomes:
    """Pool rows into an :class:`Outcomes` with one unit per distinct value of column ``unit``."""
    keys = np.asarray(table.column(unit).to_numpy(zero_copy_only=False), dtype=object)
    pids = np.asarray(table.column("prompt_id").to_numpy(zero_copy_only=False), dtype=object)
    if prompt_ids is None:
        prompt_ids = [p for p, _ in prompt_catalog(table)]
    p_index = {p: k for k, p in enumerate(prompt_ids)}
    keep = np.array([p in p_index for p in pids], dtype=bool)
    keys, pids = keys[keep], pids[keep]
    correct = table.column("correct").to_numpy(zero_copy_only=False)[keep].astype(np.float64)
    conf = table.column("confidence").to_numpy(zero_copy_only=False)[keep].astype(np.float64)
    queries = np.asarray(table.column("query").to_numpy(zero_copy_only=False), dtype=object)[keep]
    groups = np.asarray(table.column("group").to_numpy(zero_copy_only=False), dtype=object)[keep]

    unit_ids, first, u = np.unique(keys, return_index=True, return_inverse=True)
    # Keep units in order of first appearance in the log, not sorted by key.
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    u = rank[u]
    first = first[order]
    p = np.array([p_index[x] for x in pids], dtype=np.int64)
    U, P = len(unit_ids), len(prompt_ids)
    count = np.zeros((U, P), np.int64)
    wins = np.zeros((U, P))
    np.add.at(count, (u, p), 1)
    np.add.at(wins, (u, p), correct)
    has_conf = ~np.isnan(conf)
    conf_sum = np.zeros((U, P))
    conf_n = np.zeros((U, P))
    np.add.at(conf_sum, (u[has_conf], p[has_conf]), conf[has_conf])
    np.add.at(conf_n, (u[has_conf], p[has_conf]), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(count > 0, wins / count, np.nan)
        confidence = np.where(conf_n > 0, conf_sum / conf_n, np.nan)
    return Outcomes(
        ids=[str(k) for k in unit_ids[order]],
        texts=[str(t) for t in queries[first]],
        groups=[str(g) for g in groups[first]],
        prompt_ids=list(prompt_ids),
        rate=rate,
        count=count,
        confidence=confidence,
    )


@dataclass
class SplitLog:
    """A log cut by a protocol: train/test rows and which prompts the model may see."""

    train: pa.Table
    test: pa.Table
    prompts: list[tuple[str, str]]  # (id, text) of every prompt, log order
    train_prompt_ids: list[str]
    heldout_prompt_ids: list[str]


def split_log(table: pa.Table, protocol: Protocol, source=None) -> SplitLog:
    """``source``: the log's file, named in errors."""
    if table.num_rows == 0:
        raise OirlError("the log has no rows", source)
    try:
        is_test = holdout_mask(table, protocol)
        prompts = prompt_catalog(table)
    except OirlError as exc:
        raise OirlError(exc.message, exc.path or source, exc.line) from None
    if not is_test.any() or is_test.all():
        n_groups = len(pc.unique(table.column("group")))
        raise OirlError(f"protocol {protocol.name!r} leaves an empty train or test set "
                        f"({table.num_rows} rows, {n_groups} distinct questions)", source)
    if len(prompts) < 2:
        raise OirlError(f"the log has {len(prompts)} prompt ({prompts[0][0]!r}); choosing a prompt needs at least 2",
                        source)
    heldout = heldout_prompts(table)
    train_ids = [p for p, _ in prompts if p not in heldout]
    train = table.filter(pa.array(~is_test & ~excluded_mask(table, protocol)))
    if not train.num_rows:
        raise OirlError(f"protocol {protocol.name!r} leaves no training rows")
    # Held-out prompts are never shown to the model, whatever rows they were logged on.
    train = train.filter(pc.is_in(train.column("prompt_id"), pa.array(train_ids)))
    return SplitLog(train, table.filter(pa.array(is_test)), prompts, train_ids, heldout)
