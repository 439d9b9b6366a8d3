"""``rerank(logs, folds=5, seed=0, ...)``: re-rank a whole logged benchmark with cross-fitted picks.

Every logged question gets prompts from models that never saw it (grouped K-fold
cross-fitting, :mod:`oirl_fast.reranking.crossfit`); the result holds one pick record per
question (:meth:`RerankResult.records`, written by :meth:`RerankResult.write_picks`) and the
report of :mod:`oirl_fast.reranking.report`.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import OirlError
from ..train.reward_model import TrainConfig
from .candidates import CANDIDATES, CandidateConfig
from .crossfit import FoldPlan, SeedResult, crossfit, inner_of
from .folds import Units, build_units
from .report import build_report

# A cheaper GBDT for the demo's cross-fitting (10 fits per candidate and dataset): twice the learning rate,
# half the leaves, so early stopping comes after about a third of the trees.
FAST_GBDT = TrainConfig(learning_rate=0.1, num_leaves=31, n_estimators=200, early_stopping_rounds=20)


@dataclass
class RerankResult:
    """units: the pooled questions; seeds: one cross-fit per seed (the first one's picks are the records);
    report: :func:`oirl_fast.reranking.report.build_report`; seconds: wall time of the cross-fitting."""

    units: Units
    seeds: list[SeedResult]
    report: dict
    seconds: float

    def records(self) -> list[dict]:
        """One dict per logged question (the first seed): dataset, query_id, group, fold, n_rows, best_single,
        model (the fold's default), pick {prompt_id, outcome, switched} (the abstention policy over the
        training prompts), top_k [{prompt_id, score, outcome}] (the default model's ranking of the training
        prompts) and, when the log holds prompts that were never logged on training questions, the same
        over all prompts as pick_all / top_k_all / best_single_all. ``outcome``: the question's logged
        success rate with that prompt (the mean over its repeats), None where it was not logged."""
        u = self.units
        first = self.seeds[0]
        out = []
        for i in range(u.n_units):
            rec = {"dataset": str(u.datasets[i]), "query_id": str(u.query_ids[i]), "group": str(u.groups[i]),
                   "fold": int(first.folds[i]), "n_rows": int(u.n_rows[i])}
            for set_name, suffix in (("train", ""), ("all", "_all")):
                if set_name not in first.sets:
                    continue
                res = first.sets[set_name]
                pid = lambda j: u.prompt_ids[int(res.cols[j])]
                val = lambda j: _outcome(u.rate[i, res.cols[j]])
                rec[f"best_single{suffix}"] = pid(res.fixed[i])
                rec[f"model{suffix}"] = str(res.model[i])
                rec[f"pick{suffix}"] = {"prompt_id": pid(res.pick[i]), "outcome": val(res.pick[i]),
                                        "switched": bool(res.switched[i])}
                rec[f"top_k{suffix}"] = [{"prompt_id": pid(j), "score": float(s), "outcome": val(j)}
                                         for j, s in zip(res.order[i], res.scores[i])]
            out.append(rec)
        return out

    def write_picks(self, path: str | Path) -> Path:
        """The :meth:`records` as JSON lines, written atomically."""
        from ..atomic import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as fh:
                for rec in self.records():
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        return Path(path)


def _outcome(x: float):
    return None if np.isnan(x) else float(x)


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise OirlError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def rerank(logs, *, folds: int = 5, seed: int = 0, seeds: int = 1, top_k: int = 3, inner_folds: int = 2,
           candidates: Sequence[str] = CANDIDATES, knn_k: int = 20, fast: bool = False, nthread: int = 1,
           embedder=None, embedder_spec: str = "static", cache_dir=None, device: str = "auto",
           progress: bool = True, log_fn: Callable[[str], None] | None = None) -> RerankResult:
    """Cross-fitted best-of-N picks for every logged question of ``logs`` and the report on them.

    ``logs``: a log table, a log file or folder, or a list of them (questions grouped across them by
    normalized text, as ``oirl train`` groups them). ``folds``: K of the grouped K-fold cross-fitting;
    ``inner_folds``: how many of the other folds choose each fold's default model and model margin (each one
    more costs K/2 fits per candidate; the default policy, the near-duplicate vote, fits nothing and is
    chosen on all K-1 other folds); ``seed``: folds and models; ``seeds``: run seeds seed..seed+N-1
    (the report gives the mean and spread; the records are the first seed's). ``candidates``: any of
    pointwise, ranking, knn, blend (blend needs two others). ``fast``: the demo's cheaper GBDT
    settings (:data:`FAST_GBDT`) instead of ``oirl train``'s. ``nthread``: LightGBM threads per fit; 1 by
    default because OpenMP threads spin on a busy machine (measured on 2 shared cores: one MAWPS fit took 2.4 s
    with one thread and 35 s with two). ``embedder``: an
    :class:`~oirl_fast.embed.Embedder` to reuse, else one is built from ``embedder_spec``.
    """
    from ..api import read_log

    say = log_fn or (lambda _m: None)
    folds = _check_int("folds", folds, 2)
    seeds = _check_int("seeds", seeds, 1)
    seed = _check_int("seed", seed, 0)
    top_k = _check_int("top_k", top_k, 1)
    inner_folds = _check_int("inner_folds", inner_folds, 1)
    knn_k = _check_int("knn_k", knn_k, 1)
    nthread = _check_int("nthread", nthread, 1)
    names = tuple(dict.fromkeys(candidates))
    unknown = [c for c in names if c not in CANDIDATES]
    if unknown or not names:
        raise OirlError(f"unknown candidate(s) {unknown or '(none given)'}; use any of {', '.join(CANDIDATES)}")
    if "blend" in names and len([c for c in names if c != "blend"]) < 2:
        raise OirlError("the blend candidate needs two other candidates to blend")
    if inner_folds > folds - 1:
        raise OirlError(f"inner_folds must be at most folds - 1 = {folds - 1}, got {inner_folds}")
    table, source = read_log(logs)
    units = build_units(table, source)
    if len(np.unique(units.groups)) < folds:
        raise OirlError(f"{folds} folds need at least {folds} distinct questions; the log has "
                        f"{len(np.unique(units.groups))}", source)
    if embedder is None:
        from ..embed import Embedder
        from ..encoders import make_encoder

        embedder = Embedder(cache_dir=cache_dir, progress=progress,
                            encoder=make_encoder(embedder_spec, cache_dir, device, log=say))
    query_emb = embedder.embed(units.texts)
    prompt_emb = embedder.embed(units.prompt_texts)
    gbdt = replace(FAST_GBDT if fast else TrainConfig(), nthread=nthread)
    config = CandidateConfig(gbdt=gbdt, knn_k=knn_k, candidates=names)
    n_pairs = len({tuple(sorted((k, j))) for k in range(folds) for j in inner_of(k, folds, inner_folds)})
    from ..progress import ProgressBar

    t0 = time.perf_counter()
    results = []
    with ProgressBar("cross-fitting", total=seeds * (folds + n_pairs), enabled=progress) as bar:
        for s in range(seed, seed + seeds):
            results.append(crossfit(units, query_emb, prompt_emb, config, FoldPlan(folds, inner_folds, s, top_k),
                                    bar.advance))
            say(f"  seed {s}: {folds} folds, {folds + n_pairs} fits per GBDT candidate")
    seconds = time.perf_counter() - t0
    settings = {"folds": folds, "inner_folds": inner_folds, "seed": seed, "seeds": seeds, "top_k": top_k,
                "candidates": list(names), "knn_k": knn_k, "fast": bool(fast), "gbdt": gbdt.to_dict(),
                "embedder": getattr(getattr(embedder, "encoder", None), "kind", None),
                "n_questions": units.n_units, "seconds": round(seconds, 1)}
    return RerankResult(units, results, build_report(table, units, results, names, settings), seconds)
