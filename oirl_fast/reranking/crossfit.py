"""Grouped K-fold cross-fitting of every candidate, with the default model and the margin chosen on inner folds.

Outer fold ``k``: every candidate is fitted on the units outside ``k`` and scores the units of
``k``. Its inner folds are ``inner_folds`` of the other outer folds (the neighbours ``k±1, k±2``…
in fold order): the inner model for inner fold ``j`` is the one fitted without ``{j, k}``, which
also serves outer fold ``j``. On the inner folds' questions only, each candidate's best-of-N
accuracy chooses the default model of fold ``k``, and that model's predicted gains choose the
abstention margin per dataset (:func:`oirl_fast.reranking.selection.choose_margin`). The test fold
is never looked at until its picks are written.

The default policy is the near-duplicate vote (:mod:`oirl_fast.reranking.neighbours`): it fits
nothing but the template directions of each training side, so its inner folds are all ``K - 1``
other folds; on their questions (each one's near-duplicates looked up on its own inner training side,
all folds but ``{j, k}``, with that side's template directions) one (cosine, alpha, margin) per dataset
is chosen by mean gain over the fixed prompt. The model-based
abstention (the default model's predicted gain must clear a margin, :func:`choose_margin`) is kept
as the ``model_margin`` selector, for comparison.

The best fixed prompt of a unit is the training prompt best on its dataset's rows of the same
training side (outer: all folds but ``k``; inner: all but ``{j, k}``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .candidates import CandidateConfig, fit_and_score, on_prompts
from .folds import Units, assign_folds, train_mask
from .neighbours import (COSINES, apply_vote, choose_vote, near_neighbours, pooled_prior, template_basis, template_key,
                         unit_rows)
from .selection import best_fixed, choose_margin, percentile_rank, policy, predicted_gain, ranked, taken


def inner_of(k: int, n_folds: int, n_inner: int) -> list[int]:
    """The inner folds of outer fold ``k``: its ``n_inner`` nearest other folds in cyclic order (k+1, k-1, k+2, …)."""
    n_inner = min(n_inner, n_folds - 1)
    out, d = [], 1
    while len(out) < n_inner:
        for j in ((k + d) % n_folds, (k - d) % n_folds):
            if j != k and j not in out and len(out) < n_inner:
                out.append(j)
        d += 1
    return out


@dataclass
class SetResult:
    """Cross-fitted picks over one prompt set (``cols`` into :attr:`Units.prompt_ids`), per unit (U,).

    order int64 (U, k): the fold's default model's top-k (indices into ``cols``); scores float (U, k);
    model: the default model's name per unit; fixed int64 (U,): the best fixed prompt (into ``cols``);
    pick int64 (U,): the default policy's prompt (the near-duplicate vote); switched bool (U,);
    near bool (U,): the unit has a neighbour that votes (at its fold's chosen cosine, or a template variant); margin_pick int64 (U,): the
    model-margin abstention's prompt; gain float (U,): the default model's predicted gain;
    gain_rank float (U,): its percentile within the fold; candidate_pick {name: int64 (U,)};
    scored bool (U,): units logged with every prompt of the set (the only ones accuracies count);
    margins: [{fold, dataset, margin, inner_gain, ...}], chosen: [{fold, model, inner accuracy per model}],
    votes: [{fold, dataset, cosine, alpha, margin, inner_gain, inner_switched, n_inner}].
    """

    cols: np.ndarray
    order: np.ndarray
    scores: np.ndarray
    model: np.ndarray
    fixed: np.ndarray
    pick: np.ndarray
    switched: np.ndarray
    gain: np.ndarray
    gain_rank: np.ndarray
    candidate_pick: dict
    scored: np.ndarray
    margins: list = field(default_factory=list)
    chosen: list = field(default_factory=list)
    near: np.ndarray | None = None
    margin_pick: np.ndarray | None = None
    votes: list = field(default_factory=list)


@dataclass
class SeedResult:
    seed: int
    folds: np.ndarray  # int64 (U,)
    sets: dict  # "train" / "all" -> SetResult


def _fixed_for(units: Units, mask: np.ndarray, cols: np.ndarray) -> dict[str, int]:
    """{dataset: best fixed column (into cols)} on the units of ``mask``; a dataset without training units
    there takes the best over all of them."""
    overall = best_fixed(units.rate[mask], units.count[mask], cols)
    out = {}
    for ds in np.unique(units.datasets):
        own = mask & (units.datasets == ds)
        out[ds] = best_fixed(units.rate[own], units.count[own], cols) if own.any() else overall
    return out


@dataclass(frozen=True)
class FoldPlan:
    """One seed's cross-fitting: ``n_folds`` outer folds, ``n_inner`` inner folds per outer one (the
    choices made on the training side), the ``seed`` folds and models are drawn from, ``top_k`` picks kept."""

    n_folds: int = 5
    n_inner: int = 2
    seed: int = 0
    top_k: int = 3


def crossfit(units: Units, query_emb: np.ndarray, prompt_emb: np.ndarray, config: CandidateConfig,
             plan: FoldPlan = FoldPlan(), progress: Callable[[int], None] = lambda n: None) -> SeedResult:
    """Cross-fit ``units`` (query_emb float32 (U, dq), prompt_emb float32 (P, dp)) as ``plan`` says: folds
    and models are drawn from ``plan.seed``. ``progress(1)`` is called after each fit of the candidates."""
    n_folds, n_inner, seed, top_k = plan.n_folds, plan.n_inner, plan.seed, plan.top_k
    folds = assign_folds(units.groups, n_folds, seed)
    cfg = config.with_seed(seed)
    train_cols = units.train_cols
    U, P = units.rate.shape
    names = cfg.candidates
    fitted = [c for c in names if c != "blend"]
    outer = {c: np.full((U, P), np.nan) for c in fitted}
    inner = {k: {c: np.full((U, P), np.nan) for c in fitted} for k in range(n_folds)}
    pairs = sorted({tuple(sorted((k, j))) for k in range(n_folds) for j in inner_of(k, n_folds, n_inner)})
    idx = np.arange(U)
    for excluded in [(k,) for k in range(n_folds)] + pairs:
        tr = train_mask(folds, *excluded)
        te = ~tr
        sc = fit_and_score(cfg, units, query_emb, prompt_emb, idx[tr], idx[te])
        if len(excluded) == 1:
            for c in fitted:
                outer[c][te] = sc[c]
        else:
            j, k = excluded
            for a, b in ((j, k), (k, j)):  # the pair model is inner fold a of outer fold b
                rows = folds[te] == a
                for c in fitted:
                    inner[b][c][idx[te][rows]] = sc[c][rows]
        progress(1)
    near_outer, near_inner = vote_lists(units, query_emb, folds, n_folds)
    sets = {"train": train_cols}
    if len(train_cols) < P:
        sets["all"] = np.arange(P)
    rng = np.random.default_rng(seed)
    result = {}
    for set_name, cols in sets.items():
        outcome = units.rate[:, cols]
        scored = units.logged_all(cols)
        k_top = min(top_k, len(cols))
        order = np.zeros((U, k_top), np.int64)
        top_scores = np.zeros((U, k_top))
        model = np.empty(U, dtype=object)
        fixed = np.zeros(U, np.int64)
        gain = np.zeros(U)
        gain_rank = np.zeros(U)
        pick = np.zeros(U, np.int64)
        cand_pick = {c: np.zeros(U, np.int64) for c in names}
        margins, chosen = [], []
        for k in range(n_folds):
            test = folds == k
            # ---- inner folds: choose the default model, then the margin of each dataset
            inner_units = np.isin(folds, inner_of(k, n_folds, n_inner)) & scored
            ifixed = np.zeros(U, np.int64)
            for j in inner_of(k, n_folds, n_inner):
                side = _fixed_for(units, train_mask(folds, j, k), cols)
                rows = folds == j
                ifixed[rows] = [side[d] for d in units.datasets[rows]]
            isc = on_prompts(inner[k], cols, names)
            inner_acc, inner_top = {}, {}
            for c in names:
                o = ranked(isc[c][inner_units], rng)
                inner_top[c] = o[:, 0]
                inner_acc[c] = float(taken(outcome[inner_units], o[:, 0]).mean()) if inner_units.any() else float("nan")
            best = max(names, key=lambda c: (np.nan_to_num(inner_acc[c], nan=-1.0), -names.index(c)))
            chosen.append({"fold": k, "model": best, "inner_accuracy": inner_acc, "n_inner": int(inner_units.sum())})
            g_in = predicted_gain(isc[best][inner_units], inner_top[best], ifixed[inner_units])
            top_v = taken(outcome[inner_units], inner_top[best])
            fix_v = taken(outcome[inner_units], ifixed[inner_units])
            margin_of = {}
            for ds in np.unique(units.datasets):
                own = units.datasets[inner_units] == ds
                m = choose_margin(g_in[own], top_v[own], fix_v[own])
                margin_of[ds] = m["margin"]
                margins.append({"fold": k, "dataset": str(ds), "model": best, "n_inner": int(own.sum()),
                                **{key: v for key, v in m.items() if key != "grid"}})
            # ---- the test fold: picks of every candidate, and the default policy
            osc = on_prompts({c: outer[c][test] for c in fitted}, cols, names)
            side = _fixed_for(units, train_mask(folds, k), cols)
            fixed[test] = [side[d] for d in units.datasets[test]]
            for c in names:
                o = ranked(osc[c], rng)
                cand_pick[c][test] = o[:, 0]
                if c == best:
                    order[test] = o[:, :k_top]
                    top_scores[test] = np.take_along_axis(osc[c], o[:, :k_top], axis=1)
            model[test] = best
            g = predicted_gain(osc[best], order[test, 0], fixed[test])
            gain[test] = g
            gain_rank[test] = percentile_rank(g)
            m_unit = np.array([margin_of[d] for d in units.datasets[test]])
            pick[test] = policy(order[test, 0], fixed[test], g, m_unit)
        vote_pick, near, votes = _vote(units, folds, cols, scored, fixed, near_outer, near_inner, n_folds)
        result[set_name] = SetResult(cols, order, top_scores, model, fixed, vote_pick, vote_pick != fixed, gain,
                                     gain_rank, cand_pick, scored, margins, chosen, near, pick, votes)
    return SeedResult(seed, folds, result)


def vote_lists(units: Units, query_emb: np.ndarray, folds: np.ndarray, n_folds: int) -> tuple[dict, dict]:
    """The vote's neighbour lists (found at ``min(COSINES)``): {k: outer fold k among the other folds} and
    {(j, k): inner fold j of outer fold k among all folds but {j, k}}, each with the template directions
    learnt on that same training side (:func:`~.neighbours.template_basis`; the test fold's texts are never used)."""
    unit_q = unit_rows(query_emb)
    keys = np.asarray([template_key(t) for t in units.texts], dtype=object)

    def lists(test: np.ndarray, side: np.ndarray):
        return near_neighbours(unit_q[test], unit_q[side], min(COSINES), basis=template_basis(unit_q[side], keys[side]))

    outer = {k: lists(folds == k, folds != k) for k in range(n_folds)}
    inner = {(j, k): lists(folds == j, train_mask(folds, j, k)) for k in range(n_folds) for j in range(n_folds) if j != k}
    return outer, inner


def _vote(units: Units, folds, cols, scored, fixed, near_outer, near_inner, n_folds):
    """The near-duplicate vote over the prompt set ``cols``: (pick int64 (U,), near bool (U,), choices), one
    (cosine, alpha, margin) per outer fold and dataset, chosen on the K - 1 other folds' questions."""
    U = units.n_units
    wins = np.nan_to_num(units.rate[:, cols]) * units.count[:, cols]
    count = units.count[:, cols].astype(np.float64)
    outcome = units.rate[:, cols]
    pick, near, votes = fixed.copy(), np.zeros(U, bool), []
    for k in range(n_folds):
        sides = []
        for j in range(n_folds):
            if j == k:
                continue
            tr = train_mask(folds, j, k)
            rows = np.flatnonzero(folds == j)
            side_fixed = _fixed_for(units, tr, cols)
            sides.append((rows, near_inner[(j, k)], wins[tr], count[tr], pooled_prior(wins[tr], count[tr]),
                          np.array([side_fixed[d] for d in units.datasets[rows]], dtype=np.int64)))
        test = np.flatnonzero(folds == k)
        tr = folds != k
        prior = pooled_prior(wins[tr], count[tr])
        for ds in np.unique(units.datasets):
            inner = []
            for rows, nbr, w, c, pr, fx in sides:
                keep = scored[rows] & (units.datasets[rows] == ds)
                inner.append({"nbr": nbr.take(keep), "wins": w, "count": c, "prior": pr, "fixed": fx[keep],
                              "outcome": outcome[rows[keep]]})
            choice = choose_vote(inner)
            votes.append({"fold": k, "dataset": str(ds), **choice})
            own = units.datasets[test] == ds
            p, has = apply_vote(near_outer[k].take(own), wins[tr], count[tr], prior, fixed[test[own]], choice)
            pick[test[own]], near[test[own]] = p, has
    return pick, near, votes
