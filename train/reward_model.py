"""Gradient-boosted reward model r(query, prompt) -> P(correct), LightGBM or XGBoost.

Features are rows of [query embedding ‖ prompt embedding] (float32, (n, d)); labels
are success rates in [0, 1] (a single 0/1 answer, or the mean over repeated
samples) with the number of samples as weight, so pooled repeats count as much as
the rows they came from. Trees have at most 64 leaves (LightGBM 63 leaves,
XGBoost depth 6) so the QuickScorer kernel can score them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..calibration import IsotonicCalibrator
from ..errors import OirlError
from ..extras import require
from .model_format import BACKENDS, MODEL_FILES


@dataclass
class TrainConfig:
    backend: str = "lightgbm"
    n_estimators: int = 300
    learning_rate: float = 0.05
    num_leaves: int = 63  # LightGBM
    max_depth: int = 6  # XGBoost: 2**6 = 64 leaves at most
    min_child_weight: float = 20.0
    colsample: float = 0.5
    subsample: float = 0.8
    max_bin: int = 63  # histogram bins per feature: 63 builds the dataset ~2x faster than 255
    early_stopping_rounds: int = 40
    valid_fraction: float = 0.15
    seed: int = 0
    nthread: int = 2

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise OirlError(f"unknown backend {self.backend!r}; use one of {', '.join(BACKENDS)}")
        # Checked here, so the CLI, the Python API and the Dask fit refuse the same values
        # before any work (an infinite learning rate used to write a model of infinite leaves).
        def integer(name: str, low: int, high: int | None = None):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low or (high is not None and v > high):
                bound = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
                raise OirlError(f"{name.replace('_', '-')} must be {bound}, got {v!r}")

        def number(name: str, low: float, high: float | None, low_open: bool):
            v = getattr(self, name)
            ok = (not isinstance(v, bool) and isinstance(v, (int, float, np.number)) and math.isfinite(v)
                  and (v > low if low_open else v >= low) and (high is None or v <= high))
            if not ok:
                where = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}{']' if high is not None else ')'}"
                raise OirlError(f"{name.replace('_', '-')} must be a finite number in {where}, got {v!r}")

        integer("n_estimators", 1)
        number("learning_rate", 0.0, 1.0, low_open=True)  # shrinkage: above 1 every step overshoots
        integer("num_leaves", 2)  # trees over 64 leaves are scored by the slower fallback paths
        integer("max_depth", 1)
        number("min_child_weight", 0.0, None, low_open=False)
        number("colsample", 0.0, 1.0, low_open=True)
        number("subsample", 0.0, 1.0, low_open=True)
        integer("max_bin", 2)
        integer("early_stopping_rounds", 1)
        number("valid_fraction", 0.0, 0.5, low_open=True)
        integer("seed", 0)
        integer("nthread", 1)

    def to_dict(self) -> dict:
        return asdict(self)


def lightgbm_params(c: TrainConfig) -> dict:
    """LightGBM training parameters for a config (the single-machine and the Dask fit use the same)."""
    return {
        # cross_entropy takes fractional labels (pooled success rates).
        "objective": "cross_entropy",
        "learning_rate": c.learning_rate,
        "num_leaves": c.num_leaves,
        "min_sum_hessian_in_leaf": c.min_child_weight * 0.1,
        "min_data_in_leaf": int(c.min_child_weight),
        "feature_fraction": c.colsample,
        "bagging_fraction": c.subsample,
        "bagging_freq": 1,
        "seed": c.seed,
        "num_threads": c.nthread,
        "verbosity": -1,
        "deterministic": True,
        "force_row_wise": True,
        "max_bin": c.max_bin,
    }


def xgboost_params(c: TrainConfig) -> dict:
    """XGBoost training parameters for a config (the single-machine and the Dask fit use the same)."""
    return {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "eta": c.learning_rate,
        "max_depth": c.max_depth,
        "min_child_weight": c.min_child_weight * 0.1,
        "colsample_bytree": c.colsample,
        "subsample": c.subsample,
        "tree_method": "hist",
        "max_bin": c.max_bin + 1,
        "seed": c.seed,
        "nthread": c.nthread,
    }


def group_validation_split(groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """bool (n,): validation rows, whole groups at a time so repeats never straddle the split."""
    uniq = np.unique(groups)
    rng = np.random.default_rng(seed)
    n_valid = max(1, int(round(fraction * len(uniq))))
    chosen = rng.choice(uniq, size=n_valid, replace=False)
    return np.isin(groups, chosen)


def _validation_metrics(y: np.ndarray, w: np.ndarray, prob: np.ndarray) -> dict:
    """Weighted log loss and AUC on the validation questions (success rates expanded by weight)."""
    from sklearn.metrics import log_loss, roc_auc_score

    # A cell with rate r over n samples is r*n positives and (1-r)*n negatives.
    labels = np.concatenate([np.ones(len(y)), np.zeros(len(y))])
    weights = np.concatenate([y * w, (1 - y) * w])
    probs = np.concatenate([prob, prob])
    keep = weights > 0
    out = {"n_cells": int(len(y)), "log_loss": float(log_loss(labels[keep], probs[keep], sample_weight=weights[keep]))}
    if len(np.unique(labels[keep])) == 2:
        out["auc"] = float(roc_auc_score(labels[keep], probs[keep], sample_weight=weights[keep]))
    return out


class RewardModel:
    """``fit(X, y, weight, groups)``, ``predict(X)``; X float32 (n, d), y float (n,) in [0, 1]."""

    def __init__(self, config: TrainConfig | None = None):
        self.config = config or TrainConfig()
        self._booster = None
        self._booster_file: Path | None = None  # a saved model, read on first use of ``booster``
        self.best_iteration: int | None = None
        self.n_features: int | None = None
        self.validation: dict = {}
        self.calibrator: IsotonicCalibrator | None = None

    @property
    def backend(self) -> str:
        return self.config.backend

    def fit(self, X: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None, groups: np.ndarray | None = None):
        X = np.ascontiguousarray(X, dtype=np.float32)
        y = np.asarray(y, dtype=np.float64)
        if X.ndim != 2 or len(X) != len(y):
            raise OirlError(f"features {X.shape} and labels {y.shape} do not match")
        if ((y < 0) | (y > 1)).any():
            raise OirlError("labels must be success rates in [0, 1]")
        weight = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=np.float64)
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        valid = group_validation_split(groups, self.config.valid_fraction, self.config.seed)
        self.n_features = X.shape[1]
        fit = self._fit_lightgbm if self.backend == "lightgbm" else self._fit_xgboost
        fit(X[~valid], y[~valid], weight[~valid], X[valid], y[valid], weight[valid])
        return self.finish(y[valid], weight[valid], self.predict(X[valid]))

    def finish(self, y_valid: np.ndarray, w_valid: np.ndarray, prob_valid: np.ndarray) -> "RewardModel":
        """Validation metrics and the calibrator, from the fitted trees' predictions on the validation cells.

        Shared by the single-machine fit and the Dask one (:mod:`oirl_fast.train.dask_fit`)."""
        self.validation = _validation_metrics(y_valid, w_valid, prob_valid)
        # Fitted on the validation questions, which the trees never trained on.
        self.calibrator = IsotonicCalibrator.fit(prob_valid, y_valid, w_valid)
        return self

    def _fit_lightgbm(self, X, y, w, Xv, yv, wv):
        lgb = require("lightgbm", "training a LightGBM model")

        c = self.config
        params = lightgbm_params(c)
        train = lgb.Dataset(X, y, weight=w, free_raw_data=True, params={"max_bin": c.max_bin})
        valid = lgb.Dataset(Xv, yv, weight=wv, reference=train)
        booster = lgb.train(
            params,
            train,
            num_boost_round=c.n_estimators,
            valid_sets=[valid],
            callbacks=[lgb.early_stopping(c.early_stopping_rounds, verbose=False)],
        )
        self.best_iteration = int(booster.best_iteration or booster.current_iteration())
        # Keep only the trees up to the best iteration, so every consumer (native
        # predict, compiled library, kernel) sees the same model.
        self.booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=self.best_iteration))

    def _fit_xgboost(self, X, y, w, Xv, yv, wv):
        xgb = require("xgboost", "training an XGBoost model")

        c = self.config
        params = xgboost_params(c)
        dtrain = xgb.DMatrix(X, y, weight=w)
        dvalid = xgb.DMatrix(Xv, yv, weight=wv)
        booster = xgb.train(
            params, dtrain, num_boost_round=c.n_estimators, evals=[(dvalid, "valid")],
            early_stopping_rounds=c.early_stopping_rounds, verbose_eval=False,
        )
        self.best_iteration = int(booster.best_iteration) + 1
        self.booster = booster[: self.best_iteration]

    @property
    def booster(self):
        """The LightGBM or XGBoost booster; a model loaded from an artifact reads its file on first use,
        so that scoring through the kernel needs neither library."""
        if self._booster is None and self._booster_file is not None:
            path = self._booster_file
            if self.backend == "lightgbm":
                lgb = require("lightgbm", "predicting with the native LightGBM model")
                booster = lgb.Booster(model_file=str(path))
            else:
                xgb = require("xgboost", "predicting with the native XGBoost model")
                booster = xgb.Booster(model_file=str(path))
                booster.set_param({"nthread": self.config.nthread})
            self._booster = booster
        return self._booster

    @booster.setter
    def booster(self, value) -> None:
        self._booster, self._booster_file = value, None

    def predict(self, X: np.ndarray) -> np.ndarray:
        """float64 (n,) probability of a correct answer."""
        if self.booster is None:
            raise OirlError("reward model is not fitted")
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise OirlError(f"expected features of shape (n, {self.n_features}), got {X.shape}")
        if self.backend == "lightgbm":
            return self.booster.predict(X, num_threads=self.config.nthread).astype(np.float64)
        return self.booster.inplace_predict(X).astype(np.float64)

    def save(self, directory: Path) -> Path:
        path = Path(directory) / MODEL_FILES[self.backend]
        self.booster.save_model(str(path))
        return path

    @classmethod
    def from_booster(cls, config: TrainConfig, booster, n_features: int, best_iteration: int | None) -> "RewardModel":
        """A model around a booster trained elsewhere (the Dask fit) or read from a file, already cut
        at ``best_iteration`` trees; ``finish`` then adds its validation metrics and calibrator."""
        model = cls(config)
        model.booster, model.n_features, model.best_iteration = booster, int(n_features), best_iteration
        if config.backend == "xgboost":
            booster.set_param({"nthread": config.nthread})
        return model

    @classmethod
    def load(cls, directory: Path, config: TrainConfig, n_features: int, best_iteration: int | None = None):
        path = Path(directory) / MODEL_FILES[config.backend]
        if not path.is_file():
            raise OirlError(f"native model file {path.name} missing", directory)
        model = cls(config)
        model._booster_file, model.n_features, model.best_iteration = path, int(n_features), best_iteration
        return model
