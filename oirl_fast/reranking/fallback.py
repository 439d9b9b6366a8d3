"""The abstention rule a model artifact carries: keep the best fixed prompt unless the pick clears a margin.

``oirl train --fallback-margin auto`` stores ``metadata.fallback`` = {"prompt_id", "margin", ...}:
the training prompt best on the training rows, and the margin (in the model's own score units)
by which the top pick's score must exceed that prompt's before ``oirl score`` switches away from
it. ``auto`` chooses the margin by grouped cross-fitting of the same model on the training side
only (:func:`fit_fallback`, with :func:`oirl_fast.reranking.selection.choose_margin`); a margin of
``None`` means the inner folds found no switch that pays, and every query gets the fixed prompt.
:func:`apply_fallback` is the one post-processing step of a top-k that ``oirl score`` runs.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import OirlError

AUTO = "auto"
INNER_FOLDS = 3


def parse_margin(value) -> float | str | None:
    """``None`` (no fallback), ``"auto"``, or a finite margin >= 0; anything else is an OirlError."""
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() == AUTO:
            return AUTO
        try:
            value = float(value)
        except ValueError:
            raise OirlError(f"--fallback-margin must be 'auto' or a number >= 0, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
        raise OirlError(f"--fallback-margin must be 'auto' or a finite number >= 0, got {value!r}")
    return float(value)


def fit_fallback(train, query_emb: np.ndarray, prompt_emb: np.ndarray, prompt_ids: list[str], config, margin,
                 folds: int = INNER_FOLDS, seed: int = 0) -> dict:
    """The ``fallback`` record for a model fitted on ``train`` (pooled :class:`~oirl_fast.splits.Outcomes` over the
    training prompts ``prompt_ids``; ``query_emb`` (U, dq) its questions, ``prompt_emb`` (P, dp) the prompts).

    ``margin``: a number is stored as given; ``"auto"`` cross-fits the model (``config``, a TrainConfig) in
    ``folds`` grouped folds of the training side, takes each question's out-of-fold predicted gain over the
    fixed prompt and keeps the margin of :func:`~oirl_fast.reranking.selection.choose_margin`."""
    # here, not at the top: oirl score imports this module for apply_fallback and must not load pyarrow/lightgbm
    from ..features import grid_features
    from .candidates import fit_pointwise
    from .folds import assign_folds
    from .selection import best_fixed, choose_margin, predicted_gain, ranked, taken

    cols = np.arange(len(prompt_ids))
    fixed = best_fixed(train.rate, train.count, cols)
    record = {"prompt_id": prompt_ids[fixed], "chosen_on": "the training rows"}
    if margin != AUTO:
        return {**record, "margin": float(margin), "margin_from": "given"}
    groups = np.asarray(train.groups, dtype=object)
    fold = assign_folds(groups, folds, seed)
    scores = np.full(train.rate.shape, np.nan)
    for k in range(folds):
        tr, te = fold != k, fold == k
        model = fit_pointwise(query_emb[tr], prompt_emb, train.rate[tr], train.count[tr], groups[tr], cols,
                              replace(config, seed=seed))
        scores[te] = model.predict(grid_features(query_emb[te], prompt_emb)).reshape(-1, len(cols))
    scored = (train.count > 0).all(axis=1)
    top = ranked(scores[scored], np.random.default_rng(seed))[:, 0]
    fixed_col = np.full(len(top), fixed)
    gain = predicted_gain(scores[scored], top, fixed_col)
    chosen = choose_margin(gain, taken(train.rate[scored], top), taken(train.rate[scored], fixed_col))
    m = chosen["margin"]
    return {**record, "margin": float(m) if np.isfinite(m) else None, "margin_from": f"{folds}-fold cross-fitting "
            "of the training side", "inner_gain": chosen["inner_gain"], "inner_switched": chosen["inner_coverage"],
            "inner_questions": int(scored.sum())}


def fallback_for_split(split, embedder, prompt_embeddings: np.ndarray, config, margin, seed: int = 0) -> dict:
    """:func:`fit_fallback` on the training side of ``split`` (a :class:`~oirl_fast.splits.SplitLog`), with the
    embeddings the model was fitted on (``prompt_embeddings``: every prompt of the log, log order)."""
    from ..splits import pool

    train = pool(split.train, unit="group", prompt_ids=split.train_prompt_ids)
    all_ids = [p for p, _ in split.prompts]
    cols = [all_ids.index(p) for p in split.train_prompt_ids]
    return fit_fallback(train, embedder.embed(train.texts), prompt_embeddings[cols], split.train_prompt_ids, config,
                        margin, seed=seed)


def resolve(fallback: dict | None, ids: list[str], texts: list[str], model_prompts: list[dict]) -> tuple[int, float] | None:
    """(candidate index of the fallback prompt, margin) when the model carries a fallback and the candidates
    hold that prompt with the model's text; None otherwise. A margin of None (never switch) is +inf."""
    if not fallback:
        return None
    pid = fallback["prompt_id"]
    text = {p["id"]: p["text"] for p in model_prompts}.get(pid)
    hits = [i for i, (c, t) in enumerate(zip(ids, texts)) if c == pid and t == text]
    if not hits:
        return None
    margin = fallback.get("margin")
    return hits[0], float("inf") if margin is None else float(margin)


def apply_fallback(idx: np.ndarray, sc: np.ndarray, fallback_scores: np.ndarray, col: int,
                   margin: float) -> tuple[np.ndarray, np.ndarray]:
    """The top-k (idx int64 (n, k), sc (n, k), best first) with the fallback prompt ``col`` moved to the front of
    every row whose top score does not exceed the fallback prompt's score (``fallback_scores`` (n,)) by more
    than ``margin``; the other prompts keep their order (the last one drops out if the fallback was not listed)."""
    keep_top = (sc[:, 0] - fallback_scores > margin) | (idx[:, 0] == col)
    if keep_top.all():
        return idx, sc
    idx, sc = idx.copy(), sc.copy()
    k = idx.shape[1]
    for i in np.flatnonzero(~keep_top):
        rest = [(j, s) for j, s in zip(idx[i], sc[i]) if j != col][: k - 1]
        idx[i] = [col] + [j for j, _ in rest]
        sc[i] = [fallback_scores[i]] + [s for _, s in rest]
    return idx, sc
