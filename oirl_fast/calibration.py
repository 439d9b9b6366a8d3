"""Isotonic calibration of reward-model probabilities, stored as plain numbers (no pickle)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .extras import require


@dataclass(frozen=True)
class IsotonicCalibrator:
    """Piecewise-linear, non-decreasing map from a raw probability to a calibrated one.

    ``x`` and ``y`` are the isotonic fit's breakpoints (sklearn's ``X_thresholds_`` /
    ``y_thresholds_``); inputs outside [x[0], x[-1]] are clipped, as sklearn does with
    ``out_of_bounds="clip"``.
    """

    x: tuple[float, ...]
    y: tuple[float, ...]

    @classmethod
    def fit(cls, prob: np.ndarray, label: np.ndarray, weight: np.ndarray | None = None) -> "IsotonicCalibrator":
        """prob float (n,) raw probabilities; label float (n,) in [0, 1] (success rates allowed); weight (n,)."""
        IsotonicRegression = require("sklearn.isotonic", "fitting the calibrator").IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
        iso.fit(np.asarray(prob, dtype=np.float64), np.asarray(label, dtype=np.float64), sample_weight=weight)
        return cls(tuple(map(float, iso.X_thresholds_)), tuple(map(float, iso.y_thresholds_)))

    def __call__(self, prob) -> np.ndarray:
        return np.interp(np.asarray(prob, dtype=np.float64), self.x, self.y)

    def to_dict(self) -> dict:
        return {"kind": "isotonic", "x": list(self.x), "y": list(self.y)}

    @classmethod
    def from_dict(cls, d: dict | None) -> "IsotonicCalibrator | None":
        if not d:
            return None
        return cls(tuple(d["x"]), tuple(d["y"]))


def reliability_bins(label: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> dict:
    """Equal-width bins of predicted probability: mean prediction, observed rate and count per bin."""
    label, prob = np.asarray(label, dtype=np.float64), np.asarray(prob, dtype=np.float64)
    which = np.clip((prob * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.bincount(which, prob, n_bins) / count
        observed = np.bincount(which, label, n_bins) / count
    return {"count": count.tolist(), "mean_predicted": mean_pred.tolist(), "observed": observed.tolist()}


def expected_calibration_error(label: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> float:
    """Sum over bins of (bin share) * |observed rate - mean prediction|."""
    b = reliability_bins(label, prob, n_bins)
    count = np.asarray(b["count"], dtype=np.float64)
    gap = np.abs(np.nan_to_num(np.asarray(b["observed"]) - np.asarray(b["mean_predicted"])))
    return float((count / count.sum() * gap).sum())
