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
    w[n]   = TEMPLATE_WEIGHT  where cos'(q, n) >= TEMPLATE_COSINE (a variant of the same template, below)
    est[p] = (sum_n w[n] wins[n, p] + alpha prior[p]) / (sum_n w[n] count[n, p] + alpha)

Template variants. SVAMP and MAWPS reuse one problem text with other numbers, and such a variant predicts
the query's winning prompt much better than a question that is merely close (SVAMP, all pairs of
different questions: correlation of the prompts' centred success rates 0.65 for the same text with the
numbers masked, 0.40 to 0.48 for other pairs at any cosine >= 0.85). Cosine alone cannot tell them apart,
since changing a question's numbers moves its embedding about as much as changing its words.
:func:`template_basis` learns, from the training questions that share a number-masked text
(:func:`template_key`), the ``TEMPLATE_RANK`` directions along which such variants differ, and
``cos'`` is the cosine with those directions projected out (:func:`project`): variants of one template
sit at ``cos'`` ~ 1, other questions keep roughly their cosine. Only embeddings are needed to apply it,
so ``oirl score`` can, with the basis stored in the artifact; texts are needed only to learn it. A
training side with fewer than ``TEMPLATE_MIN_PAIRS`` same-template pairs learns no basis and the vote
is the cosine kernel alone. (Measured, ``oirl rerank`` grouped 5-fold on the bundled logs, seeds 0-13,
mean gain over the best fixed prompt without -> with template variants: SVAMP +0.97 -> +1.18 points,
share of the repeat-based headroom 27% -> 32%; MAWPS +2.06 -> +2.10, 50% -> 50%; GSM8K 0 -> 0.)

(Weighting by closeness was measured against equal weights once, grouped 5-fold, seed 0: SVAMP +0.96 against
+0.81 points, MAWPS +1.92 against +1.70; it is fixed here, not tuned per run.)

The policy takes ``argmax est`` where that beats the fixed prompt's estimate by more than ``margin``,
and the fixed prompt elsewhere (and for every query without a neighbour of weight > 0). ``cosine``,
``alpha`` and ``margin`` come from one pre-registered grid (:data:`COSINES` x :data:`ALPHAS` x
:data:`MARGINS`; the cosine :data:`ONLY_TEMPLATES` lets template variants alone vote), the triple with the
largest mean gain over the fixed prompt on inner folds (:func:`choose_vote`), "never switch" unless that
gain clears :data:`MIN_Z` standard errors. Pure numpy: ``oirl score`` imports this module.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import product

import numpy as np

ONLY_TEMPLATES = 1.0  # the grid's cosine at which only template variants (cos' >= TEMPLATE_COSINE) vote
COSINES = (0.85, 0.9, 0.93, 0.95, 0.97, 0.99, ONLY_TEMPLATES)
ALPHAS = (1.0, 3.0, 10.0, 30.0, 100.0)
MARGINS = (0.0, 0.02, 0.05, 0.1)
# The chosen triple's inner mean gain must clear MIN_Z standard errors (over inner questions) or the vote never
# switches: one screen at the one-sided 5% level on the one triple chosen, not a correction over the grid
# (Bonferroni over the grid was too strict for half-point gains on a few thousand inner questions). It keeps
# the vote from switching on inner gains that are noise, e.g. GSM8K's +0.03 to +0.15 points.
MIN_Z = 1.645
FLOOR = 0.1  # weight of a neighbour exactly at the threshold (a templated variant that just qualifies)
BLOCK = 1024  # query rows per matrix product: bounds the (block, n_train) similarity matrix
# Template variants (module docstring). Pre-registered, not tuned per run: rank 16 keeps 86% of the spread of
# SVAMP's same-template differences; at cos' >= 0.995 SVAMP's other pairs above the variants' 5th percentile
# fall from 6,436 to 1,126; a variant weighs 3 times a neighbour at cosine 1 (1 + FLOOR), close to the ratio
# of the correlations above. Checked on seeds 8-13 against rank 32 at 0.998 (+1.18 points), not tuned further.
TEMPLATE_RANK = 16
TEMPLATE_COSINE = 0.995
TEMPLATE_WEIGHT = 3.0
TEMPLATE_MIN_PAIRS = 2 * TEMPLATE_RANK
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Neighbours:
    """Sparse near-neighbour lists, CSR-like: row i's neighbours are ``index[indptr[i]:indptr[i+1]]`` (int64,
    rows of the training matrix) with cosines ``cosine[...]`` (float32), all >= the ``min_cos`` asked for;
    ``template`` (float32, same length, or None): each pair's cosine with the template directions projected out
    (:func:`project`), when :func:`near_neighbours` was given a basis."""

    indptr: np.ndarray
    index: np.ndarray
    cosine: np.ndarray
    template: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.indptr) - 1

    def take(self, keep: np.ndarray) -> "Neighbours":
        """The lists of the query rows where ``keep`` (bool (n,)) is true, in order."""
        lo, hi = self.indptr[:-1][keep], self.indptr[1:][keep]
        sel = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]).astype(np.int64) if len(lo) else \
            np.zeros(0, np.int64)
        return Neighbours(np.concatenate([[0], np.cumsum(hi - lo)]).astype(np.int64), self.index[sel], self.cosine[sel],
                          None if self.template is None else self.template[sel])

    def rows(self) -> np.ndarray:
        """int64 (nnz,): the query row of each neighbour entry."""
        return np.repeat(np.arange(self.n), np.diff(self.indptr))


def unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 (n, d): ``x`` with each row scaled to unit norm (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norm > 0, norm, 1.0), dtype=np.float32)


def template_key(text: str) -> str:
    """The question's template: its normalized text (:func:`oirl_fast.schema.normalize_question`) with every
    number (``3``, ``3.0``, ``45.25``) replaced by ``#``. Questions with one key are variants of one template."""
    from ..schema import normalize_question  # here: oirl score imports this module without pyarrow's schema

    return _NUMBER.sub("#", normalize_question(text))


def template_basis(vectors: np.ndarray, keys, rank: int = TEMPLATE_RANK) -> np.ndarray | None:
    """float32 (r, d), r <= ``rank``: the directions along which questions with one template key differ, or None
    when the rows hold fewer than :data:`TEMPLATE_MIN_PAIRS` pairs of questions sharing a key.

    vectors float32 (n, d) unit-norm, keys (n,) (:func:`template_key`). The top eigenvectors of the scatter of
    all within-key pairwise differences (computed as each key's scatter about its mean times the key's size,
    which equals it), so the result depends on the set of rows, not their order (up to the eigenvectors'
    signs, which :func:`project` does not see). None too when the variants' vectors coincide."""
    _, key_id, size = np.unique(np.asarray(keys, dtype=object), return_inverse=True, return_counts=True)
    m = size[key_id]
    pairs = int((size * (size - 1) // 2).sum())
    if pairs < TEMPLATE_MIN_PAIRS:
        return None
    shared = m > 1
    x = np.asarray(vectors, dtype=np.float64)[shared]
    ids = key_id[shared]
    mean = np.zeros((len(size), x.shape[1]))
    np.add.at(mean, ids, x)
    mean /= np.maximum(size, 1)[:, None]
    dev = (x - mean[ids]) * np.sqrt(m[shared])[:, None]
    with _one_blas_thread():
        val, vec = np.linalg.eigh(dev.T @ dev)
    keep = min(rank, int((val > 1e-12 * max(val[-1], 1e-300)).sum()))
    if keep == 0:  # the variants coincide: no direction to remove, and cos' would be the plain cosine
        return None
    return np.ascontiguousarray(vec[:, ::-1][:, :keep].T, dtype=np.float32)


def _one_blas_thread():
    """A context with BLAS/LAPACK on one thread where threadpoolctl is installed (it comes with scikit-learn,
    which fitting needs; scoring never gets here): a (d, d) eigh took 0.8 s with OpenBLAS's default threads
    on 2 shared cores and 9 ms with one."""
    from contextlib import nullcontext

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def project(vectors: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
    """float32 (n, d) unit rows: ``vectors`` with the directions of ``basis`` (r, d) removed; as given when None."""
    if basis is None:
        return vectors
    x = np.asarray(vectors, dtype=np.float32)
    return unit_rows(x - (x @ basis.T) @ basis)


def near_neighbours(query: np.ndarray, train: np.ndarray, min_cos: float, block: int = BLOCK,
                    basis: np.ndarray | None = None, train_projected: np.ndarray | None = None) -> Neighbours:
    """The training rows at cosine >= ``min_cos`` of each query row. query float32 (n, d), train float32 (m, d),
    both unit-norm (:func:`unit_rows`). One float32 matrix product per block of ``block`` query rows. With a
    ``basis`` (:func:`template_basis`), each pair's cosine with its directions projected out too
    (``train_projected``: ``project(train, basis)``, when the caller keeps it)."""
    ptr, idx, cos, tmpl = [np.zeros(1, np.int64)], [], [], []
    end = 0
    if basis is not None:
        train_p = project(train, basis) if train_projected is None else train_projected
    for s in range(0, len(query), block):
        q = query[s:s + block]
        sim = q @ train.T if len(train) else np.zeros((len(q), 0), np.float32)
        # most scored queries have no near-duplicate: a row maximum first, then the pairs of the rows that have
        # one, halves the search (200k queries against 1,308 questions: 0.93 -> 0.52 s)
        hit = np.flatnonzero(sim.max(axis=1, initial=-np.inf) >= min_cos)
        r, c = np.nonzero(sim[hit] >= min_cos)
        idx.append(c.astype(np.int64))
        cos.append(sim[hit[r], c].astype(np.float32))
        if basis is not None:  # only the rows with a neighbour are projected
            tmpl.append(np.einsum("ij,ij->i", project(q[hit], basis)[r], train_p[c]).astype(np.float32))
        counts = np.bincount(hit[r], minlength=len(q))
        ptr.append(end + np.cumsum(counts))
        end += len(r)
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)
    return Neighbours(np.concatenate(ptr).astype(np.int64), cat(idx, np.int64), cat(cos, np.float32),
                      cat(tmpl, np.float32) if basis is not None else None)


def vote_weights(nbr: Neighbours, cosine: float, template_cosine: float = TEMPLATE_COSINE,
                 template_weight: float = TEMPLATE_WEIGHT) -> np.ndarray:
    """float64 (nnz,): each neighbour's weight in the vote (module docstring): its closeness above ``cosine``
    (none at :data:`ONLY_TEMPLATES`), or ``template_weight`` for a template variant (``nbr.template`` >=
    ``template_cosine``); 0 for a neighbour that does not vote."""
    c = nbr.cosine.astype(np.float64)
    if cosine >= ONLY_TEMPLATES:
        w = np.zeros(len(c))
    else:  # the threshold compared in the lists' float32, as they were found
        w = np.where(nbr.cosine >= cosine, FLOOR + (c - cosine) / (1.0 - cosine), 0.0)
    if nbr.template is not None:
        w = np.where(nbr.template >= template_cosine, template_weight, w)
    return w


def vote_estimates(nbr: Neighbours, wins: np.ndarray, count: np.ndarray, prior: np.ndarray, cosine: float,
                   alpha: float, template_cosine: float = TEMPLATE_COSINE,
                   template_weight: float = TEMPLATE_WEIGHT) -> tuple[np.ndarray, np.ndarray]:
    """(est float64 (n, P), has bool (n,)): the shrunk, weighted success estimate of every prompt from the
    neighbours that vote (:func:`vote_weights`), and whether the query has one. wins, count float64 (m, P):
    per training question, correct answers and answers per prompt; prior float64 (P,). A query without a
    voting neighbour gets ``prior``."""
    weight = vote_weights(nbr, cosine, template_cosine, template_weight)
    keep = weight > 0
    rows, cols = nbr.rows()[keep], nbr.index[keep]
    # per prompt, one bincount sums each query's neighbours in their stored order (rows ascending, training
    # rows ascending within a row): deterministic, and no scipy, which a scoring-only install lacks
    w = _row_sums(rows, weight[keep], wins[cols], nbr.n)
    c = _row_sums(rows, weight[keep], count[cols], nbr.n)
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
    mean gain exceeds ``min_z`` (default :data:`MIN_Z`) standard errors of the per-question gains. Template
    variants vote where the sides' lists carry template cosines (:func:`near_neighbours` given a basis).
    Returns {"cosine", "alpha", "margin", "inner_gain", "inner_switched", "n_inner", "best_inner_gain",
    "best_inner_se", "template_cosine", "template_weight"}."""
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
            "best_inner_se": se, "template_cosine": TEMPLATE_COSINE, "template_weight": TEMPLATE_WEIGHT}


def apply_vote(nbr: Neighbours, wins: np.ndarray, count: np.ndarray, prior: np.ndarray, fixed: np.ndarray,
               choice: dict) -> tuple[np.ndarray, np.ndarray]:
    """(pick int64 (n,), near bool (n,)): the policy of ``choice`` (from :func:`choose_vote`) for the queries of
    ``nbr``, and which of them have a neighbour that votes (none when it never switches). Template variants
    vote when ``nbr`` carries template cosines, at the choice's ``template_cosine`` and ``template_weight``."""
    fixed = np.broadcast_to(np.asarray(fixed, dtype=np.int64), (nbr.n,))
    if choice.get("cosine") is None:
        return fixed.copy(), np.zeros(nbr.n, bool)
    est, has = vote_estimates(nbr, wins, count, prior, choice["cosine"], choice["alpha"],
                              choice.get("template_cosine", TEMPLATE_COSINE), choice.get("template_weight", TEMPLATE_WEIGHT))
    return vote_pick(est, has, fixed, choice["margin"]), has
