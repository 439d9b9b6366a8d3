"""Pure metric functions: classification quality of a reward model and best-of-N selection.

Selection inputs are matrices over (unit, prompt): ``outcome[u, p]`` is the observed
success rate of prompt p on test unit u (0/1 for a single sample), NaN where the
prompt was not logged; ``scores[u, p]`` is what a selector ranks by.
"""
from __future__ import annotations

import numpy as np

from .extras import require

TIE_TOL = 1e-12


def classification_report(y_true: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict:
    """Accuracy, precision, recall, F1 at ``threshold`` and ROC AUC; y_true int (n,), prob float (n,)."""
    skm = require("sklearn.metrics", "the reward model's classification metrics")
    accuracy_score, f1_score, precision_score = skm.accuracy_score, skm.f1_score, skm.precision_score
    recall_score, roc_auc_score = skm.recall_score, skm.roc_auc_score
    y_true = np.asarray(y_true).astype(int)
    pred = (np.asarray(prob) >= threshold).astype(int)
    both = len(np.unique(y_true)) == 2
    return {
        "n": int(len(y_true)),
        "positive_rate": float(y_true.mean()) if len(y_true) else float("nan"),
        "accuracy": float(accuracy_score(y_true, pred)),
        "precision": float(precision_score(y_true, pred, zero_division=0)),
        "recall": float(recall_score(y_true, pred, zero_division=0)),
        "f1": float(f1_score(y_true, pred, zero_division=0)),
        "auc": float(roc_auc_score(y_true, prob)) if both else float("nan"),
    }


def pick_accuracy(scores: np.ndarray, outcome: np.ndarray) -> float:
    """Mean outcome of the top-scored prompt per unit, ties broken uniformly at random (in expectation).

    scores, outcome: float (U, P). A prompt with NaN score is never picked. Breaking
    ties in expectation rather than by index keeps a model that scores every
    prompt alike from borrowing the accuracy of whichever prompt comes first.
    """
    return float(np.mean(pick_values(scores, outcome)))


def pick_values(scores: np.ndarray, outcome: np.ndarray) -> np.ndarray:
    """Per-unit expected outcome of the pick, float (U,)."""
    scores = np.where(np.isnan(scores), -np.inf, scores)
    best = scores.max(axis=1, keepdims=True)
    tied = scores >= best - TIE_TOL
    return np.nansum(np.where(tied, outcome, 0.0), axis=1) / tied.sum(axis=1)


def tie_rate(scores: np.ndarray) -> float:
    """Share of units whose top score is shared by two or more prompts."""
    scores = np.where(np.isnan(scores), -np.inf, scores)
    best = scores.max(axis=1, keepdims=True)
    return float(np.mean((scores >= best - TIE_TOL).sum(axis=1) > 1))


def oracle_accuracy(outcome: np.ndarray) -> float:
    """Mean over units of the best prompt's outcome: the upper bound of any selector."""
    return float(np.mean(np.nanmax(outcome, axis=1)))


def random_accuracy(outcome: np.ndarray) -> float:
    """Expected accuracy of a uniformly random prompt per unit."""
    return float(np.mean(np.nanmean(outcome, axis=1)))


def fixed_prompt_accuracy(outcome: np.ndarray, prompt: int) -> float:
    """Accuracy of always using one prompt (column ``prompt``)."""
    return float(np.mean(outcome[:, prompt]))


def paired_bootstrap_ci(
    a: np.ndarray, b: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval for mean(a - b), resampling units in pairs.

    a, b: float (U,), per-unit results of two selectors on the same test units.
    Pairing keeps the between-unit variance (some questions are hard for every
    prompt) out of the difference, so the interval is much tighter than one
    computed from the two accuracies separately.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError("need two equally long, non-empty 1-d arrays")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    block = max(1, 2_000_000 // len(d))  # bound the index matrix to ~16 MB
    for start in range(0, n_boot, block):
        stop = min(n_boot, start + block)
        idx = rng.integers(0, len(d), size=(stop - start, len(d)))
        means[start:stop] = d[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def shrunk_rates(wins: np.ndarray, count: np.ndarray, prior: np.ndarray, strength: float) -> np.ndarray:
    """Per-(unit, prompt) success estimate pulled toward the prompt's overall rate.

    (wins + strength * prior) / (count + strength): with few samples a question's
    own record says little, so the estimate leans on the prompt mean ``prior`` (P,).
    """
    return (np.nan_to_num(wins) + strength * prior[None, :]) / (count + strength)
