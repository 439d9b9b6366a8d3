"""The near-duplicate vote: switch away from the best fixed prompt only for a query whose templated
near-duplicates were logged, and only to the prompt that won on them.

Why: cross-fitted, the whole gain of the reward models on SVAMP and MAWPS sits on questions with a
near-duplicate (static cosine >= 0.95) on the training side, and they lose a little elsewhere
(README, "Why GSM8K does not gain"). The logged outcomes of those near-duplicates (several answers per
pair) say directly which prompt wins on the template, so the vote uses them and no model at all.

For a query ``q`` with unit-norm embedding, its near-duplicates are the training questions at cosine
>= ``cosine``. Each prompt's estimated success is its success over them, each neighbour weighted by how
close it is, shrunk toward the prompt's success over the whole training side (``prior``) with ``alpha``
pseudo-answers::

    w[n]   = FLOOR + (cos(q, n) - cosine) / (1 - cosine)       # FLOOR at the threshold, 1 + FLOOR at cos 1
    est[p] = (sum_n w[n] wins[n, p] + alpha prior[p]) / (sum_n w[n] count[n, p] + alpha)

(Weighting by closeness was measured against equal weights once, grouped 5-fold, seed 0: SVAMP +0.96 against
+0.81 points, MAWPS +1.92 against +1.70; it is fixed here, not tuned per run.)

The policy takes ``argmax est`` where that beats the fixed prompt's estimate by more than ``margin``,
and the fixed prompt elsewhere (and for every query without a near-duplicate). ``cosine``, ``alpha``
and ``margin`` come from one pre-registered grid (:data:`COSINES` x :data:`ALPHAS` x :data:`MARGINS`),
the triple with the largest mean gain over the fixed prompt on inner folds (:func:`choose_vote`),
"never switch" unless that gain clears :data:`MIN_Z` standard errors. Pure numpy:
``oirl score`` imports this module.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

COSINES = (0.85, 0.9, 0.93, 0.95, 0.97, 0.99)
ALPHAS = (1.0, 3.0, 10.0, 30.0, 100.0)
MARGINS = (0.0, 0.02, 0.05, 0.1)
# The chosen triple's inner mean gain must clear MIN_Z standard errors (over inner questions) or the vote never
# switches: one screen at the one-sided 5% level on the one triple chosen, not a correction over the grid
# (Bonferroni over the grid was too strict for half-point gains on a few thousand inner questions). It keeps
# the vote from switching on inner gains that are noise, e.g. GSM8K's +0.03 to +0.15 points.
MIN_Z = 1.645
FLOOR = 0.1  # weight of a neighbour exactly at the threshold (a templated variant that just qualifies)
BLOCK = 1024  # query rows per matrix product: bounds the (block, n_train) similarity matrix


@dataclass(frozen=True)
class Neighbours:
    """Sparse near-neighbour lists, CSR-like: row i's neighbours are ``index[indptr[i]:indptr[i+1]]`` (int64,
    rows of the training matrix) with cosines ``cosine[...]`` (float32), all >= the ``min_cos`` asked for."""

    indptr: np.ndarray
    index: np.ndarray
    cosine: np.ndarray

    @property
    def n(self) -> int:
        return len(self.indptr) - 1

    def take(self, keep: np.ndarray) -> "Neighbours":
        """The lists of the query rows where ``keep`` (bool (n,)) is true, in order."""
        lo, hi = self.indptr[:-1][keep], self.indptr[1:][keep]
        sel = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]).astype(np.int64) if len(lo) else \
            np.zeros(0, np.int64)
        return Neighbours(np.concatenate([[0], np.cumsum(hi - lo)]).astype(np.int64), self.index[sel], self.cosine[sel])

    def rows(self) -> np.ndarray:
        """int64 (nnz,): the query row of each neighbour entry."""
        return np.repeat(np.arange(self.n), np.diff(self.indptr))


def unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 (n, d): ``x`` with each row scaled to unit norm (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norm > 0, norm, 1.0), dtype=np.float32)


def near_neighbours(query: np.ndarray, train: np.ndarray, min_cos: float, block: int = BLOCK) -> Neighbours:
    """The training rows at cosine >= ``min_cos`` of each query row. query float32 (n, d), train float32 (m, d),
    both unit-norm (:func:`unit_rows`). One float32 matrix product per block of ``block`` query rows."""
    ptr, idx, cos = [np.zeros(1, np.int64)], [], []
    end = 0
    for s in range(0, len(query), block):
        sim = query[s:s + block] @ train.T if len(train) else np.zeros((len(query[s:s + block]), 0), np.float32)
        r, c = np.nonzero(sim >= min_cos)
        idx.append(c.astype(np.int64))
        cos.append(sim[r, c].astype(np.float32))
        counts = np.bincount(r, minlength=sim.shape[0])
        ptr.append(end + np.cumsum(counts))
        end += len(r)
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)
    return Neighbours(np.concatenate(ptr).astype(np.int64), cat(idx, np.int64), cat(cos, np.float32))


def vote_estimates(nbr: Neighbours, wins: np.ndarray, count: np.ndarray, prior: np.ndarray, cosine: float,
                   alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(est float64 (n, P), has bool (n,)): the shrunk, closeness-weighted success estimate of every prompt from the neighbours at
    cosine >= ``cosine``, and whether the query has one. wins, count float64 (m, P): per training question,
    correct answers and answers per prompt; prior float64 (P,). A query without neighbours gets ``prior``."""
    keep = nbr.cosine >= cosine
    rows, cols = nbr.rows()[keep], nbr.index[keep]
    weight = (FLOOR + (nbr.cosine[keep].astype(np.float64) - cosine) / (1.0 - cosine))[:, None]
    # per prompt, one bincount sums each query's neighbours in their stored order (rows ascending, training
    # rows ascending within a row): deterministic, and no scipy, which a scoring-only install lacks
    w = _row_sums(rows, weight[:, 0], wins[cols], nbr.n)
    c = _row_sums(rows, weight[:, 0], count[cols], nbr.n)
    has = np.bincount(rows, minlength=nbr.n) > 0
    return (w + alpha * prior) / (c + alpha), has


def _row_sums(rows: np.ndarray, weight: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """float64 (n, P): for each query row, the sum of ``weight`` (nnz,) times ``values`` (nnz, P) over its entries."""
    out = np.zeros((n, values.shape[1]))
    for p in range(values.shape[1]):
        out[:, p] = np.bincount(rows, weights=weight * values[:, p], minlength=n)
    return out


def vote_pick(est: np.ndarray, has: np.ndarray, fixed: np.ndarray, margin: float) -> np.ndarray:
    """int64 (n,): the prompt with the highest estimate where the query has near-duplicates and that estimate
    beats the fixed prompt's (``fixed`` int (n,)) by more than ``margin``; the fixed prompt elsewhere. Ties go
    to the lowest column (np.argmax), so the pick is a pure function of the estimates."""
    rows = np.arange(len(est))
    top = np.argmax(est, axis=1)
    switch = has & (est[rows, top] - est[rows, fixed] > margin) & (top != fixed)
    return np.where(switch, top, fixed).astype(np.int64)


def pooled_prior(wins: np.ndarray, count: np.ndarray) -> np.ndarray:
    """float64 (P,): each prompt's success rate over all the rows given (0 where never logged)."""
    n = count.sum(axis=0)
    return np.where(n > 0, wins.sum(axis=0) / np.maximum(n, 1), 0.0)


def grid() -> list[tuple[float, float, float]]:
    """The pre-registered (cosine, alpha, margin) triples, in a fixed order."""
    return list(product(COSINES, ALPHAS, MARGINS))


def choose_vote(sides: list[dict], min_z: float | None = None) -> dict:
    """The (cosine, alpha, margin) with the largest mean gain over the fixed prompt on inner-fold questions.

    ``sides``: one dict per inner fold: ``nbr`` (:class:`Neighbours` of its questions among its training side,
    found at ``min(COSINES)``), ``wins``/``count`` (m, P) and ``prior`` (P,) of that training side, ``fixed``
    int (n,) and ``outcome`` float (n, P) of its questions (the logged success rates; rows with a NaN outcome
    must be left out by the caller). One mean over all inner questions; a tie goes to the earlier triple of
    :func:`grid`, so the choice is reproducible. "Never switch" (``cosine`` None) unless the chosen triple's
    mean gain exceeds ``min_z`` (default :data:`MIN_Z`) standard errors of the per-question gains. Returns {"cosine", "alpha", "margin", "inner_gain", "inner_switched", "n_inner"}."""
    z = MIN_Z if min_z is None else float(min_z)
    triples = grid()
    slot = {t: g for g, t in enumerate(triples)}
    total = np.zeros(len(triples))
    total_sq = np.zeros(len(triples))
    switched = np.zeros(len(triples))
    n = sum(len(s["fixed"]) for s in sides)
    for s in sides:
        rows = np.arange(len(s["fixed"]))
        base = s["outcome"][rows, s["fixed"]]
        for cos, alpha in product(COSINES, ALPHAS):
            est, has = vote_estimates(s["nbr"], s["wins"], s["count"], s["prior"], cos, alpha)
            for margin in MARGINS:
                pick = vote_pick(est, has, s["fixed"], margin)
                g = slot[(cos, alpha, margin)]
                d = s["outcome"][rows, pick] - base
                total[g] += float(np.sum(d))
                total_sq[g] += float(np.sum(d * d))
                switched[g] += float(np.sum(pick != s["fixed"]))
    best = int(np.argmax(total)) if n else 0
    mean = float(total[best] / n) if n else 0.0
    se = float(np.sqrt(max(total_sq[best] / n - mean * mean, 0.0) / (n - 1))) if n > 1 else float("inf")
    if not n or mean <= z * se:
        return {"cosine": None, "alpha": None, "margin": None, "inner_gain": 0.0, "inner_switched": 0.0,
                "n_inner": int(n), "best_inner_gain": mean, "best_inner_se": se}
    cos, alpha, margin = triples[best]
    return {"cosine": cos, "alpha": alpha, "margin": margin, "inner_gain": mean,
            "inner_switched": float(switched[best] / n), "n_inner": int(n), "best_inner_gain": mean,
            "best_inner_se": se}


def apply_vote(nbr: Neighbours, wins: np.ndarray, count: np.ndarray, prior: np.ndarray, fixed: np.ndarray,
               choice: dict) -> tuple[np.ndarray, np.ndarray]:
    """(pick int64 (n,), near bool (n,)): the policy of ``choice`` (from :func:`choose_vote`) for the queries of
    ``nbr``, and which of them have a near-duplicate at its cosine (none when it never switches)."""
    fixed = np.broadcast_to(np.asarray(fixed, dtype=np.int64), (nbr.n,))
    if choice.get("cosine") is None:
        return fixed.copy(), np.zeros(nbr.n, bool)
    est, has = vote_estimates(nbr, wins, count, prior, choice["cosine"], choice["alpha"])
    return vote_pick(est, has, fixed, choice["margin"]), has
