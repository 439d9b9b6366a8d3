"""The reward model's order of the prompts for each query, and the confidence in its top pick.

One definition for ``oirl tradeoff`` (which simulates policies on logged answers) and
``oirl answer`` (which runs them), so the two agree to the last question.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ranking:
    """``scores`` float64 (U, P) reward-model scores; ``order`` int64 (U, P) prompt columns best first (a tie
    goes to the earlier column); ``confidence`` float64 (U,) the calibrated success probability of the top
    pick (the raw top score when the model has no calibrator)."""

    scores: np.ndarray
    order: np.ndarray
    confidence: np.ndarray


def prompt_order(scores: np.ndarray) -> np.ndarray:
    """int64 (U, P): each row's prompt columns by descending score, ties to the earlier column."""
    return np.argsort(-scores, axis=1, kind="stable")


def rank_prompts(scores: np.ndarray, calibrator=None) -> Ranking:
    """The :class:`Ranking` of float (U, P) ``scores`` (cast to float64) with the model's ``calibrator``
    (a callable on float64 (U,) top scores, or None)."""
    scores = np.asarray(scores, dtype=np.float64)
    top = scores.max(axis=1)
    confidence = np.asarray(calibrator(top), dtype=np.float64) if calibrator is not None else top
    return Ranking(scores, prompt_order(scores), confidence)
