"""The abstention rule a model artifact carries: keep the best fixed prompt unless the pick clears a margin.

``oirl train --fallback-margin auto`` stores ``metadata.fallback`` = {"prompt_id", "margin", ...}:
the training prompt best on the training rows, and the margin (in the model's own score units)
by which the top pick's score must exceed that prompt's before ``oirl score`` switches away from
it. ``auto`` chooses the margin by grouped cross-fitting of the same model on the training side
only (:func:`fit_fallback`, with :func:`oirl_fast.reranking.selection.choose_margin`); a margin of
``None`` means the inner folds found no switch that pays, and every query gets the fixed prompt.

``oirl train --fallback-margin vote`` stores rerank's default policy instead, the near-duplicate vote
(:mod:`oirl_fast.reranking.neighbours`): ``metadata.fallback`` = {"prompt_id", "margin": None,
"vote": {"file", "cosine", "alpha", "margin", "prompt_ids", ...}}, its (cosine, alpha, margin) chosen by
grouped cross-validation on the training side only, and the artifact file ``neighbours.npz``
(checksummed in the manifest like every file) holds what the vote needs for new queries: the
training questions' unit-norm embeddings float32 (m, d), their correct answers and answers per
training prompt float64 (m, P'), and (when the training side holds template variants) the template
directions float32 (r, d) of :func:`oirl_fast.reranking.neighbours.template_basis`, so that scoring
needs only the query's embedding. A query with no training question at cosine >= ``cosine`` keeps the
fixed prompt; one with near-duplicates gets the prompt that won on them, when that clears the margin.

:func:`resolve_rule` turns the artifact's record into a :class:`Rule` for a candidate set, and
:func:`apply_rule` is the one post-processing step of a top-k that ``oirl score`` (local and Dask, one
code path) and ``Model.pick`` run.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import OirlError

AUTO = "auto"
VOTE = "vote"
INNER_FOLDS = 3
VOTE_FOLDS = 5
NEIGHBOURS_FILE = "neighbours.npz"


def parse_margin(value) -> float | str | None:
    """``None`` (no fallback), ``"auto"``, ``"vote"``, or a finite margin >= 0; anything else is an OirlError."""
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() in (AUTO, VOTE):
            return value.strip().lower()
        try:
            value = float(value)
        except ValueError:
            raise OirlError(f"--fallback-margin must be 'auto', 'vote' or a number >= 0, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
        raise OirlError(f"--fallback-margin must be 'auto', 'vote' or a finite number >= 0, got {value!r}")
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
    if margin == VOTE:
        raise ValueError("the vote is fitted by fit_vote")
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


def fit_vote(train, query_emb: np.ndarray, prompt_ids: list[str], folds: int = VOTE_FOLDS,
             seed: int = 0) -> tuple[dict, dict | None]:
    """(``fallback`` record, arrays for :data:`NEIGHBOURS_FILE` or None) of the near-duplicate vote over the
    training side ``train`` (pooled :class:`~oirl_fast.splits.Outcomes` over the training prompts ``prompt_ids``,
    ``query_emb`` (U, dq) its questions). (cosine, alpha, margin) come from ``folds`` grouped folds of the
    training side: each fold's questions voted on by the other folds' (:func:`~.neighbours.choose_vote`), with
    the template directions (:func:`~.neighbours.template_basis`) learnt on those other folds; the artifact's
    directions are learnt on the whole training side.
    No arrays when the inner folds find no gain clear of noise (:data:`~.neighbours.MIN_Z`): the record then
    says never switch."""
    from .folds import assign_folds
    from .neighbours import COSINES, choose_vote, near_neighbours, pooled_prior, template_basis, template_key, unit_rows
    from .selection import best_fixed

    cols = np.arange(len(prompt_ids))
    fixed = best_fixed(train.rate, train.count, cols)
    wins = np.nan_to_num(train.rate) * train.count
    count = train.count.astype(np.float64)
    unit_q = unit_rows(query_emb)
    keys = np.asarray([template_key(t) for t in train.texts], dtype=object)
    fold = assign_folds(np.asarray(train.groups, dtype=object), folds, seed)
    scored = (train.count > 0).all(axis=1)
    sides = []
    for k in range(folds):
        tr, te = fold != k, (fold == k) & scored
        side_fixed = best_fixed(train.rate[tr], train.count[tr], cols)
        sides.append({"nbr": near_neighbours(unit_q[te], unit_q[tr], min(COSINES),
                                             basis=template_basis(unit_q[tr], keys[tr])),
                      "wins": wins[tr], "count": count[tr], "prior": pooled_prior(wins[tr], count[tr]),
                      "fixed": np.full(int(te.sum()), side_fixed, np.int64), "outcome": train.rate[te]})
    choice = choose_vote(sides)
    basis = template_basis(unit_q, keys)
    record = {"prompt_id": prompt_ids[fixed], "chosen_on": "the training rows", "margin": None,
              "margin_from": "near-duplicate vote", "vote": {
                  **choice, "prompt_ids": list(prompt_ids), "chosen_by": f"{folds}-fold grouped cross-validation "
                  "of the training side", "n_questions": int(len(unit_q)),
                  "template_rank": 0 if basis is None else int(len(basis)), "search_cosine": float(min(COSINES))}}
    if choice["cosine"] is None:
        return record, None
    record["vote"]["file"] = NEIGHBOURS_FILE
    arrays = {"vectors": unit_q, "wins": wins.astype(np.float64), "count": count}
    if basis is not None:
        arrays["template_basis"] = basis
    return record, arrays


def describe(fallback: dict) -> str:
    """One line saying what a ``fallback`` record does, for ``oirl train``'s log."""
    vote = fallback.get("vote")
    if not vote:
        return (f"{fallback['prompt_id']} unless the pick beats it by more than "
                + ("(never: no switch paid on the inner folds)" if fallback["margin"] is None
                   else f"{fallback['margin']:.4f}"))
    if vote["cosine"] is None:
        return f"{fallback['prompt_id']} unless the query has training near-duplicates (never: no vote paid on the inner folds)"
    from .neighbours import ONLY_TEMPLATES

    which = "variants of its template" if vote["cosine"] >= ONLY_TEMPLATES else f"near-duplicates (cosine >= {vote['cosine']})"
    if vote.get("template_rank") and vote["cosine"] < ONLY_TEMPLATES:
        which += " or variants of its template"
    return f"{fallback['prompt_id']} unless the query has training {which} on which another prompt won by more than {vote['margin']}"


def fallback_for_split(split, embedder, prompt_embeddings: np.ndarray, config, margin,
                       seed: int = 0) -> tuple[dict, dict | None]:
    """(record, arrays) of :func:`fit_vote` (``margin`` "vote") or (record of :func:`fit_fallback`, None) on the
    training side of ``split`` (a :class:`~oirl_fast.splits.SplitLog`), with the embeddings the model was fitted
    on (``prompt_embeddings``: every prompt of the log, log order)."""
    from ..splits import pool

    train = pool(split.train, unit="group", prompt_ids=split.train_prompt_ids)
    if margin == VOTE:
        return fit_vote(train, embedder.embed(train.texts), split.train_prompt_ids, seed=seed)
    all_ids = [p for p, _ in split.prompts]
    cols = [all_ids.index(p) for p in split.train_prompt_ids]
    return fit_fallback(train, embedder.embed(train.texts), prompt_embeddings[cols], split.train_prompt_ids, config,
                        margin, seed=seed), None


def load_vote_arrays(path, fallback: dict | None, query_dim: int) -> dict | None:
    """The vote's arrays from the artifact folder ``path`` (its checksum already verified by the loader), checked
    against the record: vectors float32 (m, query_dim), wins and count float64 (m, P') finite, count > 0 where
    wins > 0, and, when present, template_basis float32 (r, query_dim) finite. None when the record has no vote file. Bad contents: OirlError naming the file."""
    from pathlib import Path

    vote = (fallback or {}).get("vote") or {}
    if not vote.get("file"):
        return None
    f = Path(path) / vote["file"]
    try:
        with np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("vectors", "wins", "count")}
            if "template_basis" in z.files:  # absent in tables written before template variants voted
                arrays["template_basis"] = z["template_basis"]
    except (ValueError, OSError, KeyError) as exc:
        raise OirlError(f"not a readable near-duplicate table ({exc})", f) from None
    v, w, c = arrays["vectors"], arrays["wins"], arrays["count"]
    P = len(vote.get("prompt_ids") or [])
    if (v.dtype != np.float32 or v.ndim != 2 or v.shape[1] != query_dim or w.shape != (len(v), P)
            or c.shape != w.shape or not all(np.isfinite(a).all() for a in (v, w, c)) or (w > c).any() or (w < 0).any()):
        raise OirlError(f"near-duplicate table has the wrong shape or values: vectors {v.dtype}{v.shape}, wins "
                        f"{w.shape}, count {c.shape}; expected float32 (m, {query_dim}) and (m, {P})", f)
    b = arrays.get("template_basis")
    if b is not None and (b.dtype != np.float32 or b.ndim != 2 or b.shape[1] != query_dim or len(b) > query_dim
                          or not np.isfinite(b).all()):
        raise OirlError(f"near-duplicate table's template_basis is {b.dtype}{b.shape}; expected float32 (r, {query_dim}) "
                        f"with r <= {query_dim}, finite", f)
    return arrays


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
    return promote(idx, sc, np.where(keep_top, idx[:, 0], col), np.where(keep_top, sc[:, 0], fallback_scores))

class Rule:
    """The abstention rule of a model for one candidate set: ``col`` (candidate index of the fixed prompt), the
    model-score ``margin`` (inf: never switch by the model), and, for the near-duplicate vote, ``vote_cols``
    (candidate index of each vote prompt) with the vote's arrays (the template directions among them, when
    the table has them) and (cosine, alpha, margin)."""

    def __init__(self, col: int, margin: float, vote: dict | None = None, arrays: dict | None = None,
                 vote_cols: np.ndarray | None = None):
        self.col, self.margin, self.vote, self.vote_cols = col, margin, vote, vote_cols
        if arrays is not None:
            from .neighbours import pooled_prior

            from .neighbours import project

            self.vectors, self.wins, self.count = arrays["vectors"], arrays["wins"], arrays["count"]
            self.prior = pooled_prior(self.wins, self.count)
            self.fixed = int(np.flatnonzero(self.vote_cols == col)[0])
            self.basis = arrays.get("template_basis")
            # the training side projected once, not per chunk; template variants can sit below the chosen cosine,
            # so with a basis the lists are found at the cosine the vote was chosen with (search_cosine)
            self.projected = project(self.vectors, self.basis) if self.basis is not None else None
            self.search = float(self.vote["cosine"]) if self.basis is None else \
                min(float(self.vote["cosine"]), float(self.vote.get("search_cosine", self.vote["cosine"])))

    def vote_targets(self, query_emb: np.ndarray) -> np.ndarray:
        """int64 (n,): the candidate index the vote picks for each query (float32 (n, d) embeddings)."""
        from .neighbours import apply_vote, near_neighbours, unit_rows

        nbr = near_neighbours(unit_rows(query_emb), self.vectors, self.search, basis=self.basis,
                              train_projected=self.projected)
        pick, _ = apply_vote(nbr, self.wins, self.count, self.prior, self.fixed, self.vote)
        return self.vote_cols[pick]


def resolve_rule(fallback: dict | None, ids: list[str], texts: list[str], model_prompts: list[dict],
                 arrays: dict | None = None) -> Rule | None:
    """The :class:`Rule` of a model's ``fallback`` record (``arrays``: :func:`load_vote_arrays`) for the candidates
    (``ids``, ``texts``), or None: no record, or a candidate set without the fixed prompt, or (for the vote)
    without every prompt the vote counts, each with the model's text. A vote that never switches is the
    fixed prompt everywhere."""
    base = resolve(fallback, ids, texts, model_prompts)
    if base is None:
        return None
    vote = fallback.get("vote")
    if not vote:
        return Rule(*base)
    if vote.get("cosine") is None or arrays is None:
        return Rule(base[0], float("inf"))
    text = {p["id"]: p["text"] for p in model_prompts}
    where = {(c, t): i for i, (c, t) in reversed(list(enumerate(zip(ids, texts))))}
    cols = [where.get((p, text.get(p))) for p in vote["prompt_ids"]]
    if any(c is None for c in cols):
        return None
    return Rule(base[0], float("inf"), vote, arrays, np.asarray(cols, dtype=np.int64))


def promote(idx: np.ndarray, sc: np.ndarray, target: np.ndarray, target_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The top-k (idx int64 (n, k), sc (n, k)) with candidate ``target[i]`` (score ``target_scores[i]``) first in
    every row i; the other prompts keep their order (the last one drops out if the target was not listed)."""
    move = idx[:, 0] != target
    if not move.any():
        return idx, sc
    idx, sc = idx.copy(), sc.copy()
    k = idx.shape[1]
    for i in np.flatnonzero(move):
        rest = [(j, s) for j, s in zip(idx[i], sc[i]) if j != target[i]][: k - 1]
        idx[i] = [target[i]] + [j for j, _ in rest]
        sc[i] = [target_scores[i]] + [s for _, s in rest]
    return idx, sc


def apply_rule(rule: Rule, idx: np.ndarray, sc: np.ndarray, query_emb: np.ndarray,
               scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The top-k (idx (n, k), sc (n, k)) after the model's rule: ``scores`` float (n, P) every candidate's score
    (the listed score of a prompt moved first), ``query_emb`` float32 (n, d) the queries (for the vote)."""
    if rule.vote is None:
        return apply_fallback(idx, sc, scores[:, rule.col], rule.col, rule.margin)
    target = rule.vote_targets(query_emb)
    return promote(idx, sc, target, scores[np.arange(len(target)), target])
