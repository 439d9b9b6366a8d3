"""The selectors compared in the same folds: pointwise GBDT, a ranking GBDT, kNN, and their blend.

Each is fitted on the training units of a fold and returns float64 scores (n, P) for every
prompt of the log (held-out prompts included: the GBDTs score them from their embedding,
kNN cannot and leaves them NaN, which is never picked). Features are the plain
[query embedding ‖ prompt embedding] of :mod:`oirl_fast.features`, so every tree node tests a
query feature or a prompt feature and the factorized kernel can score both GBDTs; extra
query-side features belong in ``query_emb`` (columns appended), prompt-side ones in
``prompt_emb``, never in a feature mixing the two.

* ``pointwise``: :class:`~oirl_fast.train.reward_model.RewardModel`, LightGBM cross-entropy on
  the pooled success rates, the model ``oirl train`` writes;
* ``ranking``: LightGBM ``rank_xendcg`` with one query group per question, labels the success
  rate in quarters; questions whose prompts all scored alike carry no ranking signal and are
  left out (which also makes it the cheaper fit);
* ``knn``: the pooled success rate of each prompt on the ``knn_k`` nearest training questions
  (cosine, faiss);
* ``blend``: the mean of the others' scores, each standardized within the question.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..extras import require
from ..features import grid_features, pair_features
from ..train.reward_model import RewardModel, TrainConfig, group_validation_split

CANDIDATES = ("pointwise", "ranking", "knn", "blend")
GBDT = ("pointwise", "ranking")
RANK_LEVELS = 4  # success rates -> integer relevance 0..4


@dataclass(frozen=True)
class CandidateConfig:
    """Settings of the candidates. ``gbdt``: the LightGBM settings both GBDTs share (``TrainConfig``;
    its objective fields are the pointwise model's, the ranking one swaps the objective only)."""

    gbdt: TrainConfig = field(default_factory=TrainConfig)
    knn_k: int = 20
    candidates: tuple[str, ...] = CANDIDATES

    def with_seed(self, seed: int) -> "CandidateConfig":
        return replace(self, gbdt=replace(self.gbdt, seed=int(seed)))


def training_cells(rate: np.ndarray, count: np.ndarray, cols: np.ndarray):
    """(unit u (k,), column p (k,), y, weight) of the logged cells of ``cols``, unit-major."""
    sub = count[:, cols]
    u, j = np.nonzero(sub > 0)
    return u, cols[j], rate[u, cols[j]], count[u, cols[j]].astype(np.float64)


def fit_pointwise(query_emb, prompt_emb, rate, count, groups, cols, config: TrainConfig) -> RewardModel:
    """The ``oirl train`` model on the units given (rows of ``query_emb``/``rate``/``count``/``groups``)."""
    u, p, y, w = training_cells(rate, count, cols)
    return RewardModel(config).fit(pair_features(query_emb, prompt_emb, u, p), y, w, np.asarray(groups)[u])


def ranking_params(c: TrainConfig) -> dict:
    from ..train.reward_model import lightgbm_params

    params = lightgbm_params(c)
    params.update(objective="rank_xendcg", metric="ndcg", eval_at=[1])
    return params


class RankingModel:
    """LightGBM ``rank_xendcg`` over [query ‖ prompt] rows, one group per question; ``predict`` -> raw scores."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.booster = None
        self.best_iteration = None

    def fit(self, query_emb, prompt_emb, rate, count, groups, cols) -> "RankingModel":
        lgb = require("lightgbm", "the ranking candidate")

        sub = rate[:, cols]
        logged = count[:, cols] > 0
        # a question whose logged prompts all scored alike says nothing about which prompt wins
        spread = np.nanmax(np.where(logged, sub, -np.inf), axis=1) > np.nanmin(np.where(logged, sub, np.inf), axis=1)
        units = np.flatnonzero(spread & (logged.sum(axis=1) >= 2))
        valid_units = group_validation_split(np.asarray(groups)[units], self.config.valid_fraction, self.config.seed)
        sets = []
        for part in (units[~valid_units], units[valid_units]):
            u, p, y, _ = training_cells(rate[part], count[part], cols)
            X = pair_features(query_emb[part], prompt_emb, u, p)
            label = np.rint(y * RANK_LEVELS).astype(np.int32)
            sizes = np.bincount(u, minlength=len(part))
            sets.append((X, label, sizes[sizes > 0]))
        (X, y, g), (Xv, yv, gv) = sets
        c = self.config
        train = lgb.Dataset(X, y, group=g, free_raw_data=True, params={"max_bin": c.max_bin})
        valid = lgb.Dataset(Xv, yv, group=gv, reference=train)
        booster = lgb.train(ranking_params(c), train, num_boost_round=c.n_estimators, valid_sets=[valid],
                            callbacks=[lgb.early_stopping(c.early_stopping_rounds, verbose=False)])
        self.best_iteration = int(booster.best_iteration or booster.current_iteration())
        # cut at the best iteration, like RewardModel: the kernel and native predict then see one model
        self.booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=self.best_iteration))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.booster.predict(np.ascontiguousarray(X, dtype=np.float32),
                                    num_threads=self.config.nthread).astype(np.float64)


def knn_scores(train_emb, train_rate, train_count, test_emb, k: int) -> np.ndarray:
    """float64 (n_test, P): each prompt's pooled success rate over the ``k`` nearest training questions
    (inner product of the unit-norm embeddings); NaN for a prompt none of them was logged with."""
    faiss = require("faiss", "the nearest-neighbour candidates")

    index = faiss.IndexFlatIP(train_emb.shape[1])
    index.add(np.ascontiguousarray(train_emb, dtype=np.float32))
    _, nbr = index.search(np.ascontiguousarray(test_emb, dtype=np.float32), min(k, len(train_emb)))
    wins = np.nan_to_num(train_rate * train_count)
    n = train_count[nbr].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, wins[nbr].sum(axis=1) / np.maximum(n, 1), np.nan)


def standardize_rows(scores: np.ndarray) -> np.ndarray:
    """Scores centred and scaled within each row (question), NaN kept; a constant row becomes 0."""
    import warnings

    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a row with every prompt NaN stays NaN
        mu = np.nanmean(scores, axis=1, keepdims=True)
        sd = np.nanstd(scores, axis=1, keepdims=True)
        return np.where(sd > 0, (scores - mu) / np.where(sd > 0, sd, 1.0), 0.0 * scores)


def blend_scores(parts: list[np.ndarray]) -> np.ndarray:
    """The mean of the parts' within-question standardized scores, over the parts that score each prompt."""
    stacked = np.stack([standardize_rows(p) for p in parts])
    with np.errstate(invalid="ignore"):
        n = np.isfinite(stacked).sum(axis=0)
        total = np.nansum(stacked, axis=0)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def fit_and_score(config: CandidateConfig, units, query_emb, prompt_emb, train: np.ndarray,
                  test: np.ndarray) -> dict[str, np.ndarray]:
    """{candidate: float64 (len(test), P) scores} of every configured candidate fitted on ``units``
    (:class:`~oirl_fast.reranking.folds.Units`) ``train`` (int indices) and scored on units ``test``; the
    models learn from the prompts ``units.train_cols``."""
    rate, count, groups, cols = units.rate, units.count, units.groups, units.train_cols
    out: dict[str, np.ndarray] = {}
    grid = None
    P = len(prompt_emb)
    qtr, qte = query_emb[train], query_emb[test]
    for name in config.candidates:
        if name in GBDT:
            if grid is None:
                grid = grid_features(qte, prompt_emb)
            if name == "pointwise":
                model = fit_pointwise(qtr, prompt_emb, rate[train], count[train], groups[train], cols, config.gbdt)
            else:
                model = RankingModel(config.gbdt).fit(qtr, prompt_emb, rate[train], count[train], groups[train], cols)
            out[name] = model.predict(grid).reshape(-1, P)
        elif name == "knn":
            sc = np.full((len(test), P), np.nan)
            sc[:, cols] = knn_scores(qtr, rate[train][:, cols], count[train][:, cols], qte, config.knn_k)
            out[name] = sc
    return out


def on_prompts(scores: dict[str, np.ndarray], cols: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The candidates ``names`` scored on the prompt columns ``cols`` only; ``blend`` is built here, on those
    columns, so that its standardization is over the prompts being chosen among."""
    out = {n: scores[n][:, cols] for n in names if n != "blend"}
    if "blend" in names:
        out["blend"] = blend_scores([out[n] for n in ("pointwise", "ranking", "knn") if n in out])
    return out
