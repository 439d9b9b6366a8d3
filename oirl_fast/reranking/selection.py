"""Picking from scores, the best fixed prompt, and abstention: switch only when the predicted gain clears a margin.

All functions are pure. ``scores`` float (n, P) with NaN for a prompt that cannot be picked;
``outcome`` float (n, P) the logged success rates; a ``cols`` array selects the prompt set
(training prompts, or all prompts) and every returned prompt index is a column of that set.
"""
from __future__ import annotations

import numpy as np

MARGIN_QUANTILES = (0.25, 0.5, 0.75, 0.9)
MARGIN_ALPHA = 0.025  # one-sided level at which a margin's inner gain must be above 0, shared by the grid
# shares of questions allowed to switch (a model keeps the fixed prompt on most questions anyway)
COVERAGES = (0.0, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


def ranked(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """int64 (n, P): column order of each row, best first; NaN last; ties in a random order drawn from ``rng``,
    so a selector that scores prompts alike does not inherit the first prompt's accuracy."""
    s = np.where(np.isnan(scores), -np.inf, scores)
    jitter = rng.random(s.shape)
    # lexsort: last key first; sort by -score, then by the random jitter
    return np.lexsort((jitter, -s), axis=1).astype(np.int64)


def taken(outcome: np.ndarray, pick: np.ndarray) -> np.ndarray:
    """float (n,): ``outcome[i, pick[i]]``."""
    return outcome[np.arange(len(pick)), pick]


def best_fixed(rate: np.ndarray, count: np.ndarray, cols: np.ndarray) -> int:
    """The column (index into ``cols``) with the highest pooled success rate over the rows given; 0 if none logged."""
    wins = np.nansum(np.nan_to_num(rate[:, cols]) * count[:, cols], axis=0)
    n = count[:, cols].sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(n > 0, wins / np.maximum(n, 1), -1.0)
    return int(np.argmax(acc))


def predicted_gain(scores: np.ndarray, top: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """float (n,): score of the top pick minus score of the fixed prompt (0 where the fixed prompt is the top)."""
    idx = np.arange(len(top))
    gain = scores[idx, top] - np.where(np.isnan(scores[idx, fixed]), -np.inf, scores[idx, fixed])
    return np.where(top == fixed, 0.0, np.nan_to_num(gain, posinf=np.finfo(np.float64).max))


def policy(top: np.ndarray, fixed: np.ndarray, gain: np.ndarray, margin: float) -> np.ndarray:
    """int64 (n,): the top pick where its predicted gain exceeds ``margin``, the fixed prompt elsewhere."""
    return np.where(gain > margin, top, fixed).astype(np.int64)


def margin_grid(gain: np.ndarray) -> list[float]:
    """Margins worth trying: 0 (switch whenever the model prefers another prompt), quantiles of the positive
    predicted gains, and infinity (never switch)."""
    pos = gain[gain > 0]
    qs = [float(q) for q in np.quantile(pos, MARGIN_QUANTILES)] if len(pos) else []
    return sorted({0.0, *qs}) + [float("inf")]


def choose_margin(gain: np.ndarray, top_value: np.ndarray, fixed_value: np.ndarray,
                  alpha: float = MARGIN_ALPHA) -> dict:
    """The margin to use, chosen on inner-fold questions (never the test fold).

    gain (n,): predicted gains; top_value, fixed_value (n,): the logged outcome of the top pick and of the
    fixed prompt. Among :func:`margin_grid`, the margin with the largest mean gain whose lower bound
    (mean - z * standard error over questions) is above 0; infinity (always the fixed prompt) when none is,
    so a model whose switches do not pay on the inner folds falls back everywhere. ``z`` is Bonferroni
    corrected over the margins tried (one-sided ``alpha`` / their number): trying several margins on the
    same questions would otherwise let noise pass one of them.
    Returns {"margin", "inner_gain", "inner_coverage", "grid": [{margin, gain, lower, coverage}]}."""
    from statistics import NormalDist

    grid = []
    best = {"margin": float("inf"), "inner_gain": 0.0, "inner_coverage": 0.0}
    n = max(1, len(gain))
    margins = margin_grid(gain)
    z = NormalDist().inv_cdf(1.0 - alpha / max(1, len(margins) - 1))
    for m in margins:
        switch = gain > m
        d = np.where(switch, top_value - fixed_value, 0.0)
        mean = float(d.mean()) if len(d) else 0.0
        se = float(d.std(ddof=1) / np.sqrt(n)) if len(d) > 1 else float("inf")
        lower = mean - z * se
        cov = float(switch.mean()) if len(d) else 0.0
        grid.append({"margin": m, "gain": mean, "lower": lower, "coverage": cov})
        if np.isfinite(m) and lower > 0 and mean > best["inner_gain"]:
            best = {"margin": m, "inner_gain": mean, "inner_coverage": cov}
    return {**best, "grid": grid}


def coverage_curve(gain_rank: np.ndarray, gain: np.ndarray, top_value: np.ndarray, fixed_value: np.ndarray,
                   coverages=COVERAGES) -> list[dict]:
    """Accuracy gain over the fixed prompt when only the share ``c`` of questions with the highest predicted gain
    switch (``gain_rank`` (n,): each question's predicted-gain percentile in [0, 1], 1 = highest, ranked within
    its fold); questions with no positive predicted gain never switch. -> [{coverage (asked), switched, gain}]."""
    out = []
    for c in coverages:
        switch = (gain > 0) & (gain_rank > 1.0 - c)
        d = np.where(switch, top_value - fixed_value, 0.0)
        out.append({"coverage": float(c), "switched": float(switch.mean()) if len(d) else 0.0,
                    "gain": float(d.mean()) if len(d) else 0.0})
    return out


def percentile_rank(x: np.ndarray) -> np.ndarray:
    """float (n,) in (0, 1]: each value's rank among ``x`` divided by n (ties share the highest rank)."""
    if not len(x):
        return np.zeros(0)
    order = np.sort(x)
    return np.searchsorted(order, x, side="right") / len(x)
