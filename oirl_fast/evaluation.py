"""Offline evaluation of a model artifact on a log: reward-model metrics and best-of-N selection.

``evaluate(artifact, table, embedder)`` rebuilds the artifact's split of the log
(:func:`oirl_fast.splits.split_log`) and reports classification, calibration and
selection against honest baselines (best single prompt chosen on train, random,
oracle, nearest-neighbour), with paired-bootstrap CIs and leakage counts.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .extras import require
from . import metrics
from .calibration import expected_calibration_error, reliability_bins
from .embed import Embedder
from .encoders import check_same_encoder
from .errors import OirlError
from .features import grid_features
from .multilog import datasets_of, leakage_by_dataset
from .schema import question_hashes
from .splits import Outcomes, Protocol, SplitLog, pool, split_log
from .train.artifact import Artifact
from .train.reward_model import RewardModel

NEAR_DUPLICATE_COSINE = 0.95
KNN_K = 50
HEADROOM_SHRINKAGE = 2.0  # pseudo-samples of the prompt mean added to each question's record


def _nearest_training(train_emb: np.ndarray, test_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(cosine float (U_test, k), index int (U_test, k)) of each test question's k nearest training questions."""
    faiss = require("faiss", "the nearest-training-question figures")

    index = faiss.IndexFlatIP(train_emb.shape[1])
    index.add(np.ascontiguousarray(train_emb, dtype=np.float32))
    return index.search(np.ascontiguousarray(test_emb, dtype=np.float32), min(k, len(train_emb)))


def _knn_scores(train: Outcomes, nbr: np.ndarray) -> np.ndarray:
    """float (U_test, P): each prompt's pooled success rate on the neighbours ``nbr`` (U_test, k)."""
    wins = np.nan_to_num(train.rate * train.count)
    n = train.count
    with np.errstate(invalid="ignore", divide="ignore"):
        return wins[nbr].sum(axis=1) / n[nbr].sum(axis=1)


def _row_predictions(test: pa.Table, outcomes: Outcomes, scores: np.ndarray, prompt_ids: list[str], unit: str):
    """(prompt_id, label, prob) per test row, looking each row's (unit, prompt) up in ``scores``."""
    u_index = {k: i for i, k in enumerate(outcomes.ids)}
    p_index = {p: i for i, p in enumerate(prompt_ids)}
    keys = test.column(unit).to_pylist()
    pids = test.column("prompt_id").to_pylist()
    labels = test.column("correct").to_numpy(zero_copy_only=False).astype(int)
    probs = np.array([scores[u_index[k], p_index[p]] for k, p in zip(keys, pids)])
    return np.asarray(pids, dtype=object), labels, probs


def check_evaluable(artifact: Artifact, table: pa.Table, source=None,
                    dataset: str | None = None) -> tuple[Protocol, SplitLog, Outcomes, Outcomes]:
    """(protocol, split, pooled train, pooled test) of ``table`` under the model's protocol, or an
    ``OirlError`` naming the log: run before any long work (the CLI fits its seed models after it).
    ``dataset``: keep only that dataset's test rows (``split.test`` is filtered too)."""
    protocol = Protocol(**artifact.metadata.protocol)
    split = split_log(table, protocol, source)
    all_ids = [p for p, _ in split.prompts]
    if all_ids != artifact.metadata.prompt_ids:
        raise OirlError(
            f"the log's prompt set {all_ids} differs from the model's {artifact.metadata.prompt_ids}",
            artifact.path / "metadata.json",
        )
    changed = [pid for (pid, text), meta in zip(split.prompts, artifact.metadata.prompts) if text != meta["text"]]
    if changed:
        raise OirlError(f"the log's text of prompt(s) {changed} differs from the model's", artifact.path / "metadata.json")
    if dataset is not None:
        rows = split.test.filter(pc.equal(split.test.column("dataset"), dataset))
        if not rows.num_rows:
            raise OirlError(f"the test split holds no rows of dataset {dataset!r}", source)
        split = replace(split, test=rows)
    train = pool(split.train, unit="group", prompt_ids=split.train_prompt_ids)
    test = pool(split.test, unit=protocol.test_unit, prompt_ids=all_ids)
    groups = [split.train_prompt_ids] + ([all_ids] if split.heldout_prompt_ids else [])
    for ids in groups:
        count = test.columns(ids).count
        if not (count > 0).all(axis=1).any():
            never = [p for j, p in enumerate(ids) if not (count[:, j] > 0).any()]
            raise OirlError(
                f"none of the {test.n_units} test questions of protocol {protocol.name!r} was logged with all "
                f"{len(ids)} prompts" + (f" ({', '.join(never)}: on none)" if never else "")
                + ", so no selector can be scored on them", source)
    labels = split.test.column("correct")
    n_correct = pc.sum(labels.cast(pa.int64())).as_py() or 0
    if n_correct in (0, len(labels)):
        raise OirlError(f"every one of the {len(labels)} test rows is {'correct' if n_correct else 'wrong'}: "
                        "selection and AUC cannot be measured on them", source)
    return protocol, split, train, test


def selection_table(scores: dict[str, np.ndarray], outcome: np.ndarray) -> dict[str, float]:
    return {name: metrics.pick_accuracy(s, outcome) for name, s in scores.items()}


def evaluate(
    artifact: Artifact,
    table: pa.Table,
    embedder: Embedder,
    knn_k: int = KNN_K,
    seed_models: list[RewardModel] = (),
    source=None,
    dataset: str | None = None,
) -> dict:
    """Evaluate on the held-out queries of the protocol the artifact was trained with.

    Returns a JSON-ready dict: classification metrics of the reward model on the test
    rows (training prompts and held-out prompts separately), best-of-N accuracy of
    the model and the baselines for N = training prompts and N = all prompts, and how
    many test questions also occur in training (exact and near-duplicate).

    Every selector's difference to the best single prompt carries a paired-bootstrap
    95% interval over the test units. ``seed_models`` are the same reward model fitted
    with other seeds: their best-of-N accuracies give the seed mean and spread, and
    the interval of ``reward_model_seed_mean`` uses the per-unit mean over seeds.

    Test questions "in train" are those the *model* was trained on (the question hashes
    its artifact records), whatever log is evaluated; near-duplicates are measured
    against those training questions that this log holds (``leakage`` says how many).
    ``source`` names the log in errors.

    ``dataset``: report on that dataset's test units only (a model trained on several
    logs); its best single prompt is then the one best on that dataset's training rows
    (on all training rows if it has none). ``test_in_train_by_dataset`` counts test units
    whose question occurs in each dataset's training rows: the leakage across datasets.
    """
    if getattr(embedder, "encoder", None) is not None:
        check_same_encoder(artifact.metadata.embedder_record, embedder.encoder, artifact.path / "metadata.json")
    protocol, split, train, test = check_evaluable(artifact, table, source, dataset)
    all_ids = [p for p, _ in split.prompts]
    test_rows = split.test
    test_emb = embedder.embed(test.texts)
    train_emb = embedder.embed(train.texts)

    P = len(all_ids)
    grid = grid_features(test_emb, artifact.prompt_embeddings)
    raw = artifact.model.predict(grid).reshape(-1, P)
    seed_raw = [m.predict(grid).reshape(-1, P) for m in seed_models]
    del grid

    # Reward-model classification quality on individual test rows.
    pids, labels, probs = _row_predictions(test_rows, test, raw, all_ids, protocol.test_unit)
    seen = np.isin(pids, split.train_prompt_ids)
    classification = {"train_prompts": metrics.classification_report(labels[seen], probs[seen])}
    if (~seen).any():
        classification["heldout_prompts"] = metrics.classification_report(labels[~seen], probs[~seen])
    calibration = {"raw": {"ece": expected_calibration_error(labels[seen], probs[seen]),
                           **reliability_bins(labels[seen], probs[seen])}}
    if artifact.model.calibrator is not None:
        cal = artifact.model.calibrator(probs[seen])
        calibration["calibrated"] = {"ece": expected_calibration_error(labels[seen], cal),
                                     **reliability_bins(labels[seen], cal)}

    # Best single prompt: highest pooled accuracy on the training rows (of the dataset reported on).
    own = split.train if dataset is None else split.train.filter(pc.equal(split.train.column("dataset"), dataset))
    chosen_on = train if own.num_rows in (0, split.train.num_rows) else pool(own, "group", split.train_prompt_ids)
    with np.errstate(invalid="ignore", divide="ignore"):
        train_acc = np.nansum(chosen_on.rate * chosen_on.count, axis=0) / chosen_on.count.sum(axis=0)
    train_acc = np.nan_to_num(train_acc, nan=-1.0)  # a prompt without training rows of the dataset is never chosen
    best_id = split.train_prompt_ids[int(np.argmax(train_acc))]
    # One search serves the kNN baseline and the near-duplicate count (nearest = column 0).
    sim, nbr = _nearest_training(train_emb, test_emb, knn_k)
    knn = _knn_scores(train, nbr)

    selection = {}
    for label, ids in (("n_train_prompts", split.train_prompt_ids), ("n_all_prompts", all_ids)):
        if label == "n_all_prompts" and not split.heldout_prompt_ids:
            continue
        cols = [all_ids.index(p) for p in ids]
        sub = test.columns(ids)
        keep = (sub.count > 0).all(axis=1)
        outcome = sub.rate[keep]
        model_scores = raw[keep][:, cols]
        scores = {"reward_model": model_scores}
        if np.isfinite(sub.confidence[keep]).all():
            scores["critic"] = sub.confidence[keep]
        if label == "n_train_prompts":
            scores["knn"] = knn[keep]
        res = selection_table(scores, outcome)
        best_values = outcome[:, ids.index(best_id)]
        per_unit = {name: metrics.pick_values(sc, outcome) for name, sc in scores.items()}
        per_unit["random"] = np.nanmean(outcome, axis=1)
        per_unit["oracle"] = np.nanmax(outcome, axis=1)
        if seed_raw:
            seed_values = [metrics.pick_values(r[keep][:, cols], outcome) for r in [raw] + seed_raw]
            accs = [float(v.mean()) for v in seed_values]
            per_unit["reward_model_seed_mean"] = np.mean(seed_values, axis=0)
            res.update(reward_model_seeds=accs, reward_model_seed_mean=float(np.mean(accs)),
                       reward_model_seed_std=float(np.std(accs, ddof=1)))
        res["diff_to_best_single_ci95"] = {
            name: list(metrics.paired_bootstrap_ci(v, best_values)) for name, v in per_unit.items()
        }
        res.update(
            n_prompts=len(ids),
            n_test_queries=int(keep.sum()),
            best_single=metrics.fixed_prompt_accuracy(outcome, ids.index(best_id)),
            random=metrics.random_accuracy(outcome),
            oracle=metrics.oracle_accuracy(outcome),
            reward_model_tie_rate=metrics.tie_rate(model_scores),
            per_prompt={p: float(np.mean(outcome[:, j])) for j, p in enumerate(ids)},
        )
        selection[label] = res

    headroom = known_question_headroom(
        test_rows, split.train_prompt_ids, train_acc, raw[:, [all_ids.index(p) for p in split.train_prompt_ids]],
        test, protocol.test_unit,
    )
    exact, near, leakage = _leakage(artifact, table, train, test, test_emb, sim, embedder)
    return {
        "dataset": dataset or protocol.heldout_dataset or artifact.metadata.dataset,
        "protocol": protocol.to_dict(),
        "backend": artifact.metadata.backend,
        "embedding_model": artifact.metadata.embedding_model,
        "embedder": artifact.metadata.embedder_record,
        "n_trees": artifact.metadata.best_iteration,
        "best_single_prompt": best_id,
        "train_prompts": split.train_prompt_ids,
        "heldout_prompts": split.heldout_prompt_ids,
        "n_train_questions": train.n_units,
        "n_test_queries": test.n_units,
        "test_in_train_exact": int(exact),
        "test_near_duplicate": near,
        "test_in_train_by_dataset": leakage_by_dataset(test.groups, split.train),
        "near_duplicate_cosine": NEAR_DUPLICATE_COSINE,
        "leakage": leakage,
        "knn_k": knn_k,
        "classification": classification,
        "calibration": calibration,
        "selection": selection,
        "headroom": headroom,
    }


def _leakage(artifact: Artifact, table: pa.Table, train: Outcomes, test: Outcomes, test_emb: np.ndarray,
             sim_log_train: np.ndarray, embedder: Embedder) -> tuple[int, int, dict]:
    """(test units the model trained on, test units with a training neighbour at cos >= NEAR_DUPLICATE_COSINE, how).

    Exact: the test question's hash is among the artifact's training-question hashes.
    Near-duplicates need the training questions' embeddings, which the artifact does not
    keep (a few MB per model): they are measured against the training questions this log
    holds (found by hash). An artifact without recorded questions falls back to the log's
    own training split, and says so."""
    recorded = artifact.train_questions
    if recorded is None:
        exact = sum(g in set(train.groups) for g in test.groups)
        near = int((sim_log_train[:, 0] >= NEAR_DUPLICATE_COSINE).sum())
        return exact, near, {"reference": "this log's training split (the model records no training questions)"}
    exact = int(np.isin(question_hashes(test.texts), recorded).sum())
    texts = pc.unique(table.column("query")).to_pylist()
    hashes = question_hashes(texts)
    _, first = np.unique(hashes, return_index=True)  # one text per question
    in_model = np.isin(hashes, recorded)
    found = [texts[i] for i in np.sort(first) if in_model[i]]
    near = 0
    if found:
        sim, _ = _nearest_training(embedder.embed(found), test_emb, 1)
        near = int((sim[:, 0] >= NEAR_DUPLICATE_COSINE).sum())
    return exact, near, {
        "reference": "the model's training questions: exact matches by the question hashes stored in the artifact, "
                     "near-duplicates against those of them found in this log",
        "model_train_questions": int(len(recorded)),
        "model_train_questions_in_log": len(found),
    }


def evaluate_per_dataset(artifact: Artifact, table: pa.Table, embedder: Embedder, knn_k: int = KNN_K,
                         seed_models: list[RewardModel] = ()) -> dict[str, dict]:
    """:func:`evaluate` on each dataset of the test split separately; {} when it holds one dataset."""
    names = datasets_of(split_log(table, Protocol(**artifact.metadata.protocol)).test)
    if len(names) < 2:
        return {}
    return {ds: evaluate(artifact, table, embedder, knn_k, seed_models, dataset=ds) for ds in names}


def known_question_headroom(
    test_rows: pa.Table,
    prompt_ids: list[str],
    prior: np.ndarray,
    model_scores: np.ndarray,
    test: Outcomes,
    unit: str,
) -> dict:
    """How much a selector that knew the question could gain, and how much of it the model gets.

    Each test question's repeated rows are split in two halves (alternate query ids).
    The ceiling picks a prompt per question from half A, shrunk toward the prompt means
    ``prior`` (P,), and scores the pick on half B; the best single prompt and the reward
    model (``model_scores`` (U, P) over ``test``'s units) are scored on half B too.
    ``captured_share`` = (model - best single) / (ceiling - best single).
    """
    if unit != "group":
        return {"available": False, "reason": "headroom needs test units that pool a question's repeats (grouped protocol)"}
    rows = test_rows.filter(pc.is_in(test_rows.column("prompt_id"), pa.array(prompt_ids)))
    groups = np.asarray(rows.column("group").to_numpy(zero_copy_only=False), dtype=object)
    qids = np.asarray(rows.column("query_id").to_numpy(zero_copy_only=False), dtype=object)
    # Rank each query id within its group; even ranks form half A, odd ranks half B.
    order = sorted(set(zip(groups.tolist(), qids.tolist())))
    rank, last, k = {}, None, 0
    for g, q in order:
        k = k + 1 if g == last else 0
        rank[(g, q)] = k
        last = g
    in_a = np.array([rank[(g, q)] % 2 == 0 for g, q in zip(groups, qids)])
    a = pool(rows.filter(pa.array(in_a)), "group", prompt_ids)
    b = pool(rows.filter(pa.array(~in_a)), "group", prompt_ids)
    b_index = {g: i for i, g in enumerate(b.ids)}
    t_index = {g: i for i, g in enumerate(test.ids)}
    units = [(i, b_index[g]) for i, g in enumerate(a.ids) if g in b_index
             and (a.count[i] > 0).all() and (b.count[b_index[g]] > 0).all()]
    if not units:
        return {"available": False,
                "reason": "the test questions have no repeated samples (each was asked once per prompt), "
                          "so a question's own record cannot be split into a half to choose on and a half to score on"}
    ia = np.array([i for i, _ in units])
    ib = np.array([j for _, j in units])
    it = np.array([t_index[a.ids[i]] for i in ia])
    outcome_b = b.rate[ib]
    wins_a = a.rate[ia] * a.count[ia]
    ceiling = metrics.pick_accuracy(metrics.shrunk_rates(wins_a, a.count[ia], prior, HEADROOM_SHRINKAGE), outcome_b)
    raw_ceiling = metrics.pick_accuracy(a.rate[ia], outcome_b)
    best = metrics.fixed_prompt_accuracy(outcome_b, int(np.argmax(prior)))
    model = metrics.pick_accuracy(model_scores[it], outcome_b)
    gap = ceiling - best
    return {
        "available": True,
        "n_questions": int(len(units)),
        "ceiling": ceiling,
        "ceiling_unshrunk": raw_ceiling,
        "best_single": best,
        "reward_model": model,
        "captured_share": (model - best) / gap if gap > 0 else None,
        "shrinkage_pseudo_samples": HEADROOM_SHRINKAGE,
    }


def summary(report: dict) -> dict:
    """The flat per-(dataset, protocol) fields of ``oirl demo --json``.

    Unsuffixed selector fields are best-of-N over the ``n_train_prompts`` prompts the model
    was trained with; ``*_all_prompts`` fields are over all ``n_all_prompts`` prompts,
    held-out ones included (None when the protocol holds no prompt out)."""
    train = report["selection"]["n_train_prompts"]
    every = report["selection"].get("n_all_prompts", {})
    train_ci = train["diff_to_best_single_ci95"]
    every_ci = every.get("diff_to_best_single_ci95", {})
    return {
        "embedder": report.get("embedder", {}).get("kind", "minilm"),
        "embedding_model": report.get("embedding_model"),
        "n_train_prompts": train["n_prompts"],
        "n_all_prompts": every.get("n_prompts"),
        "best_single": train["best_single"],
        "best_of_n": train["reward_model"],
        "best_of_n_all_prompts": every.get("reward_model"),
        "oracle": train["oracle"],
        "oracle_all_prompts": every.get("oracle"),
        "critic": train.get("critic"),
        "critic_all_prompts": every.get("critic"),
        "knn": train["knn"],
        "random": train["random"],
        "random_all_prompts": every.get("random"),
        "best_single_all_prompts": every.get("best_single"),
        "auc": report["classification"]["train_prompts"]["auc"],
        "auc_heldout": report["classification"].get("heldout_prompts", {}).get("auc"),
        "n_test_queries": report["n_test_queries"],
        "n_test_queries_all_prompts": every.get("n_test_queries"),
        "test_in_train": report["test_in_train_exact"],
        "test_near_duplicate": report["test_near_duplicate"],
        "test_in_train_by_dataset": report.get("test_in_train_by_dataset"),
        "best_of_n_diff_ci": train_ci["reward_model"],
        "best_of_n_all_prompts_diff_ci": every_ci.get("reward_model"),
        "seeds": len(train.get("reward_model_seeds", [None])),
        "best_of_n_seed_mean": train.get("reward_model_seed_mean"),
        "best_of_n_seed_std": train.get("reward_model_seed_std"),
        "best_of_n_all_prompts_seed_mean": every.get("reward_model_seed_mean"),
        "best_of_n_all_prompts_seed_std": every.get("reward_model_seed_std"),
        "ece": report["calibration"]["raw"]["ece"],
        "ece_calibrated": report["calibration"].get("calibrated", {}).get("ece"),
        "headroom": {k: report["headroom"].get(k) for k in ("ceiling", "best_single", "captured_share")}
        if report["headroom"]["available"] else None,
    }


def summaries(report: dict) -> dict[str, dict[str, dict]]:
    """{dataset: {protocol: summary}} of a report and of its ``per_dataset`` reports, if any."""
    out = {report["dataset"]: {report["protocol"]["name"]: summary(report)}}
    for ds, rep in report.get("per_dataset", {}).items():
        out[ds] = {rep["protocol"]["name"]: summary(rep)}
    return out
