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


def run_tradeoff(model_dir, embedder, source=None, dataset: str = "gsm8k", limit: int | None = None) -> dict:
    """Simulate the policies on the logged GSM8K test answers with a trained model artifact.

    ``limit``: use only the first ``limit`` test queries (a quick look, or a test).
    """
    import pyarrow.compute as pc

    from .collect.published import import_published, last_number, load_gsm8k_answers, load_prompts
    from .errors import OirlError
    from .features import grid_features
    from .train.artifact import load_artifact

    if dataset != "gsm8k":
        raise OirlError(f"the {dataset} logs hold verdicts but no answer texts, so votes cannot be simulated; "
                        "only gsm8k has logged answers")
    prompts = load_prompts(source)
    ids = [p.id for p in prompts]
    artifact = load_artifact(model_dir, embedding_model=embedder.model_id, prompt_ids=ids)
    log = import_published("gsm8k", source)
    test = log.filter(pc.equal(log.column("split"), "test"))
    first = test.filter(pc.equal(test.column("prompt_id"), ids[0]))
    U = first.num_rows if limit is None else max(1, min(limit, first.num_rows))
    queries, gold_text = first.column("query").to_pylist()[:U], first.column("gold").to_pylist()[:U]
    gold = np.array([float(g) for g in gold_text])
    values = np.full((len(queries), len(ids)), np.nan)
    agree, n = 0, 0
    for j, p in enumerate(prompts):
        answers = load_gsm8k_answers(p, source)
        values[:, j] = [np.nan if (x := last_number(a)) is None else x for a in answers[:U]]
        verdicts = test.filter(pc.equal(test.column("prompt_id"), p.id)).column("correct").to_pylist()[:U]
        ours = np.isclose(values[:, j], gold) & ~np.isnan(values[:, j])
        agree += int((ours == np.array(verdicts)).sum())
        n += len(verdicts)
    order = [artifact.metadata.prompt_ids.index(i) for i in ids]
    scores = artifact.model.predict(grid_features(embedder.embed(queries), artifact.prompt_embeddings[order]))
    scores = scores.reshape(len(queries), len(ids))
    top = scores.max(axis=1)
    confidence = artifact.model.calibrator(top) if artifact.model.calibrator is not None else top
    train = log.filter(pc.equal(log.column("split"), "train"))
    train_ids = [p.id for p in prompts if p.role == "train"]
    acc = [np.mean(train.filter(pc.equal(train.column("prompt_id"), i)).column("correct").to_numpy()) for i in train_ids]
    best_single = ids.index(train_ids[int(np.argmax(acc))])
    points = simulate(values, gold, scores, confidence, best_single)
    return {
        "dataset": dataset,
        "model": str(model_dir),
        "n_queries": len(queries),
        "n_prompts": len(ids),
        "grader_agreement_with_published_verdicts": agree / n,
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
