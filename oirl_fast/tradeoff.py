"""Cost-quality trade-off of prompting policies, simulated from logged answers only.

Every policy is measured in LLM calls per query and accuracy, on queries whose
answers to every prompt are logged (the GSM8K test set: 16 prompts x 1000 queries):

* ``best single``: the prompt best on the training rows (1 call);
* ``reward model``: the reward model's pick (1 call);
* ``vote k (reward model)`` / ``vote k (random)``: majority vote over the numeric
  answers of the reward model's top-k prompts, or of k random prompts (k calls);
* ``cascade k, T``: the reward model's pick, and only where its calibrated success
  probability is below T, k more calls (the next k prompts by score) and a vote over
  all k + 1 answers.

Votes: answers are compared as numbers (``last_number``); an answer with no number
does not vote. Ties are broken toward the answer of the better-ranked prompt (the
reward model's order; for random prompts, their draw order), so results are
deterministic. A query with no numeric answer counts as wrong.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def vote(values: np.ndarray, order: np.ndarray) -> float:
    """Majority value among ``values[order]`` (NaN = no answer); ties go to the earliest in ``order``."""
    counts: dict[float, int] = {}
    first: dict[float, int] = {}
    for rank, j in enumerate(order):
        v = values[j]
        if np.isnan(v):
            continue
        counts[v] = counts.get(v, 0) + 1
        first.setdefault(v, rank)
    if not counts:
        return float("nan")
    return max(counts, key=lambda v: (counts[v], -first[v]))


def _accuracy(picked: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(np.isclose(picked, gold, rtol=0, atol=1e-6) & ~np.isnan(picked)))


def simulate(
    values: np.ndarray,
    gold: np.ndarray,
    scores: np.ndarray,
    confidence: np.ndarray,
    best_single: int,
    ks: tuple[int, ...] = (3, 5),
    thresholds: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5),
    seed: int = 0,
) -> list[dict]:
    """Points ``{policy, calls_per_query, accuracy}``.

    values float (U, P): numeric answer of prompt p on query u (NaN if none);
    gold float (U,); scores float (U, P) reward-model scores; confidence float (U,)
    calibrated success probability of the reward model's pick.
    """
    U, P = values.shape
    rows = np.arange(U)
    rank = np.argsort(-scores, axis=1, kind="stable")
    points = [
        {"policy": "best single", "calls_per_query": 1.0, "accuracy": _accuracy(values[:, best_single], gold)},
        {"policy": "reward model", "calls_per_query": 1.0, "accuracy": _accuracy(values[rows, rank[:, 0]], gold)},
    ]
    rng = np.random.default_rng(seed)
    for k in ks:
        if k > P:
            continue
        top = np.array([vote(values[u], rank[u, :k]) for u in range(U)])
        points.append({"policy": f"vote {k} (reward model)", "calls_per_query": float(k), "accuracy": _accuracy(top, gold)})
        rand = np.array([vote(values[u], rng.permutation(P)[:k]) for u in range(U)])
        points.append({"policy": f"vote {k} (random)", "calls_per_query": float(k), "accuracy": _accuracy(rand, gold)})
        for t in thresholds:
            unsure = confidence < t
            picked = values[rows, rank[:, 0]].copy()
            for u in np.flatnonzero(unsure):
                picked[u] = vote(values[u], rank[u, : k + 1])
            points.append({
                "policy": f"cascade {k}, T={t}",
                "calls_per_query": float(1 + k * unsure.mean()),
                "accuracy": _accuracy(picked, gold),
            })
    return points


def pareto_front(points: list[dict]) -> list[dict]:
    """Points no other point beats on both fewer calls and higher accuracy, by calls."""
    front = []
    for p in sorted(points, key=lambda p: (p["calls_per_query"], -p["accuracy"])):
        if not front or p["accuracy"] > front[-1]["accuracy"]:
            front.append(p)
    return front


@dataclass
class AnswerTable:
    """Logged answers of every prompt on a set of test queries.

    queries (U,), gold float (U,), values float (U, P) numeric answers (NaN if none),
    verdicts bool (U, P) the log's own grading, prompt_ids (P,), best_single column index.
    """

    queries: list
    gold: np.ndarray
    values: np.ndarray
    verdicts: np.ndarray
    prompt_ids: list
    best_single: int


def _number(text) -> float:
    from .collect.graders import last_number

    x = None if text is None else last_number(str(text))
    return np.nan if x is None else x


def _published_answers(source, limit: int | None) -> AnswerTable:
    import pyarrow.compute as pc

    from .collect.published import import_published, load_gsm8k_answers, load_prompts

    prompts = load_prompts(source)
    ids = [p.id for p in prompts]
    log = import_published("gsm8k", source)
    test = log.filter(pc.equal(log.column("split"), "test"))
    first = test.filter(pc.equal(test.column("prompt_id"), ids[0]))
    U = first.num_rows if limit is None else max(1, min(limit, first.num_rows))
    values = np.full((U, len(ids)), np.nan)
    verdicts = np.zeros((U, len(ids)), bool)
    for j, p in enumerate(prompts):
        values[:, j] = [_number(a) for a in load_gsm8k_answers(p, source)[:U]]
        verdicts[:, j] = test.filter(pc.equal(test.column("prompt_id"), p.id)).column("correct").to_pylist()[:U]
    train = log.filter(pc.equal(log.column("split"), "train"))
    train_ids = [p.id for p in prompts if p.role == "train"]
    acc = [np.mean(train.filter(pc.equal(train.column("prompt_id"), i)).column("correct").to_numpy()) for i in train_ids]
    return AnswerTable(first.column("query").to_pylist()[:U], np.array([float(g) for g in first.column("gold").to_pylist()[:U]]),
                       values, verdicts, ids, ids.index(train_ids[int(np.argmax(acc))]))


def _log_answers(log_path, protocol: dict, prompt_ids: list, limit: int | None) -> AnswerTable:
    """Answers from a log with a ``response`` column (e.g. collected with oirl collect), on the
    test queries of the model's own protocol, so the model never saw them."""
    from .errors import OirlError
    from .pipeline import split_log
    from .schema import read_logs
    from .splits import Protocol

    table = read_logs(log_path)
    responses = table.column("response")
    if responses.null_count == table.num_rows:
        raise OirlError("the log keeps no responses (column 'response' is empty), so answers cannot be voted over; "
                        "collect with responses kept", log_path)
    split = split_log(table, Protocol(**protocol))
    rows = split.test.to_pylist()
    cells: dict = {}
    for r in rows:
        if r["response"] is not None and r["prompt_id"] in prompt_ids:
            cells.setdefault(r["query_id"], {}).setdefault(r["prompt_id"], r)
    complete = [q for q, per in cells.items() if len(per) == len(prompt_ids)]
    if not complete:
        raise OirlError("no test query has a logged response for every prompt of the model", log_path)
    complete = complete[:limit] if limit else complete
    first = [cells[q][prompt_ids[0]] for q in complete]
    try:
        gold = np.array([float(str(r["gold"]).replace(",", "")) for r in first])
    except ValueError:
        raise OirlError("votes compare numbers, but some gold answers are not numeric", log_path) from None
    values = np.array([[_number(cells[q][p]["response"]) for p in prompt_ids] for q in complete])
    verdicts = np.array([[cells[q][p]["correct"] for p in prompt_ids] for q in complete])
    correct = np.array(split.train.column("correct").to_pylist(), dtype=float)
    pids = split.train.column("prompt_id").to_pylist()
    acc = {p: correct[[x == p for x in pids]].mean() for p in split.train_prompt_ids}
    return AnswerTable([r["query"] for r in first], gold, values, verdicts, list(prompt_ids),
                       prompt_ids.index(max(acc, key=acc.get)))


def run_tradeoff(model_dir, embedder, source=None, dataset: str = "gsm8k", limit: int | None = None,
                 log=None) -> dict:
    """Simulate the policies with a trained model artifact on logged answers.

    Answers come from the bundled GSM8K answer logs, or from ``log`` (any oirl log whose
    ``response`` column keeps the answers; its test queries under the model's protocol).
    ``limit``: use only the first ``limit`` test queries.
    """
    from .errors import OirlError
    from .features import grid_features
    from .train.artifact import load_artifact

    artifact = load_artifact(model_dir, embedding_model=embedder.model_id)
    if getattr(embedder, "encoder", None) is not None:
        from .encoders import check_same_encoder

        check_same_encoder(artifact.metadata.embedder_record, embedder.encoder, artifact.path / "metadata.json")
    if log is not None:
        answers = _log_answers(log, artifact.metadata.protocol, artifact.metadata.prompt_ids, limit)
        dataset = artifact.metadata.dataset
    else:
        if dataset != "gsm8k":
            raise OirlError(f"the {dataset} logs hold verdicts but no answer texts, so votes cannot be simulated; "
                            "only gsm8k has logged answers (or pass --log with a log that keeps responses)")
        answers = _published_answers(source, limit)
        if sorted(answers.prompt_ids) != sorted(artifact.metadata.prompt_ids):
            raise OirlError(f"model was built for prompts {artifact.metadata.prompt_ids}, the answers cover "
                            f"{answers.prompt_ids}", artifact.path / "metadata.json")
    ours = np.isclose(answers.values, answers.gold[:, None]) & ~np.isnan(answers.values)
    order = [artifact.metadata.prompt_ids.index(i) for i in answers.prompt_ids]
    scores = artifact.model.predict(grid_features(embedder.embed(answers.queries), artifact.prompt_embeddings[order]))
    scores = scores.reshape(len(answers.queries), len(answers.prompt_ids))
    top = scores.max(axis=1)
    confidence = artifact.model.calibrator(top) if artifact.model.calibrator is not None else top
    points = simulate(answers.values, answers.gold, scores, confidence, answers.best_single)
    return {
        "dataset": dataset,
        "model": str(model_dir),
        "n_queries": len(answers.queries),
        "n_prompts": len(answers.prompt_ids),
        "grader_agreement_with_published_verdicts": float(np.mean(ours == answers.verdicts)),
        "points": points,
        "pareto_front": [p["policy"] for p in pareto_front(points)],
    }


def plot_tradeoff(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .atomic import atomic_path

    pts = result["points"]
    front = pareto_front(pts)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for p in pts:
        ax.scatter(p["calls_per_query"], p["accuracy"], s=18)
        ax.annotate(p["policy"], (p["calls_per_query"], p["accuracy"]), fontsize=6, xytext=(3, 2),
                    textcoords="offset points")
    ax.plot([p["calls_per_query"] for p in front], [p["accuracy"] for p in front], "k--", lw=1, label="Pareto front")
    ax.set_xlabel("LLM calls per query")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{result['dataset']}: cost and quality of prompting policies (logged answers)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
