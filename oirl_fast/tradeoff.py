"""Cost-quality trade-off of prompting policies, simulated from logged answers only.

Every policy is measured in LLM calls per query and accuracy, on queries whose
answers to every prompt are logged (the GSM8K test set: 16 prompts x 1000 queries):

* ``best single``: the prompt best on the training rows (1 call);
* ``reward model``: the reward model's pick (1 call);
* ``vote k (reward model)`` / ``vote k (random)``: majority vote over the numeric
  answers of the reward model's top-k prompts, or of k random prompts (k calls);
* ``vote k (fixed: best on train)`` / ``vote k (fixed: model's mean score)``: a vote over
  one set of k prompts used for every query: the k best on the training rows, or the k
  the reward model scores highest on average over the queries (k calls). These are what
  a user without a per-query selector would try, so they are the baselines that
  per-query ranking has to beat;
* ``cascade k, T``: the reward model's pick, and only where its calibrated success
  probability is below T, k more calls (the next k prompts by score) and a vote over
  all k + 1 answers.

Votes: answers are compared as numbers (``last_number``); an answer with no number
does not vote. Ties are broken toward the answer of the better-ranked prompt (the
reward model's order; for random prompts, their draw order; for a fixed set, its
order), so results are deterministic. A query with no numeric answer counts as wrong.

Every policy carries paired-bootstrap 95% intervals (queries resampled in pairs) of its
difference to the best single prompt and to each fixed-set vote with the same number
of calls (k = ceil(calls per query), so a cascade is compared with a fixed vote that
spends at least as much); ``seeds`` > 1 averages over reward models refitted with other
seeds on the same split.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .extras import require
from .answer.policies import majority
from .atomic import atomic_path
from .collect.published import import_published
from .encoders import check_same_encoder
from .errors import OirlError
from .metrics import paired_bootstrap_ci
from .ranking import prompt_order, rank_prompts
from .schema import read_logs
from .scoring.candidates import model_candidates
from .scoring.scorer import Scorer
from .splits import Protocol
from .tradeoff_answers import AnswerSource, log_answers, published_answers
from .train.artifact import load_artifact
from .train.fit import fit_reward_model


def vote(values: np.ndarray, order: np.ndarray) -> float:
    """Majority value among ``values[order]`` (NaN = no answer); ties go to the earliest in ``order``
    (:func:`oirl_fast.answer.policies.majority`, the rule ``oirl answer`` votes with)."""
    picked = [None if np.isnan(values[j]) else float(values[j]) for j in order]
    winner = majority(picked)
    return float("nan") if winner is None else picked[winner]


def _correct(picked: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """bool (U,): the picked numeric answer equals the gold one (no answer is wrong)."""
    return np.isclose(picked, gold, rtol=0, atol=1e-6) & ~np.isnan(picked)


def _accuracy(picked: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(_correct(picked, gold)))


@dataclass
class PolicyOutcome:
    """What one policy did on every query: calls float (U,) spent, correct bool (U,).

    kind: ``best_single``, ``reward_model``, ``vote_ranked`` (the model's top k per query),
    ``vote_fixed_train`` / ``vote_fixed_model`` (one set of k prompts for every query: the k
    best on the training rows / the k with the highest mean model score), ``vote_random``
    or ``cascade``; k: answers voted over at most (1 for a single pick).
    """

    policy: str
    kind: str
    k: int
    calls: np.ndarray
    correct: np.ndarray

    @property
    def calls_per_query(self) -> float:
        return float(np.mean(self.calls))

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.correct))


@dataclass(frozen=True)
class PolicyGrid:
    """Which policies :func:`policy_outcomes` simulates: votes over k prompts for each k in ``ks`` (and
    cascades of k more calls, at each calibrated-probability threshold in ``thresholds``); ``seed``
    draws the random prompts of the random votes."""

    ks: tuple[int, ...] = (3, 5)
    thresholds: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5)
    seed: int = 0


FIXED_SETS = {"best_on_train": ("vote_fixed_train", "fixed: best on train"),
              "model_mean": ("vote_fixed_model", "fixed: model's mean score")}


def fixed_orders(scores: np.ndarray, train_accuracy: np.ndarray | None, best_single: int) -> dict[str, np.ndarray]:
    """The query-independent prompt orders the fixed-set votes take their first k from.

    ``best_on_train``: prompts with training rows, by accuracy on them (``train_accuracy`` float (P,),
    NaN where a prompt has no training rows; without it, only ``best_single``);
    ``model_mean``: every prompt by its mean reward-model score over the queries, float (U, P) ``scores``
    (no verdict is used, so a user can compute it on an unlabelled benchmark). Ties keep column order.
    """
    if train_accuracy is None:
        train = np.array([best_single])
    else:
        acc = np.asarray(train_accuracy, dtype=float)
        seen = np.flatnonzero(~np.isnan(acc))
        train = seen[np.argsort(-acc[seen], kind="stable")]
    return {"best_on_train": train, "model_mean": np.argsort(-scores.mean(axis=0), kind="stable")}


def _fixed_vote(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    return np.array([vote(values[u], order) for u in range(len(values))])


def policy_outcomes(
    values: np.ndarray,
    gold: np.ndarray,
    scores: np.ndarray,
    confidence: np.ndarray,
    best_single: int,
    grid: PolicyGrid = PolicyGrid(),
    train_accuracy: np.ndarray | None = None,
) -> tuple[list[PolicyOutcome], dict[str, dict[int, PolicyOutcome]]]:
    """Every policy's per-query outcome, and the fixed-set votes of every size as references.

    values float (U, P): numeric answer of prompt p on query u (NaN if none); gold float (U,);
    scores float (U, P) reward-model scores; confidence float (U,) calibrated success
    probability of the reward model's pick; best_single the column of the best single prompt;
    grid the votes and cascades to simulate (:class:`PolicyGrid`); train_accuracy float (P,) see
    :func:`fixed_orders`. Returns (policies in report order, ``references[family][k]``: the
    fixed-set vote over k prompts for k = 1 .. max(grid.ks) + 1, as far as the family has prompts;
    k = 1 is a single prompt).
    """
    ks, thresholds = grid.ks, grid.thresholds
    U, P = values.shape
    rows = np.arange(U)
    one = np.ones(U)
    rank = prompt_order(scores)
    orders = fixed_orders(scores, train_accuracy, best_single)
    references: dict[str, dict[int, PolicyOutcome]] = {}
    for family, order in orders.items():
        kind, label = FIXED_SETS[family]
        references[family] = {
            k: PolicyOutcome(f"vote {k} ({label})" if k > 1 else f"single ({label})", kind, k, k * one,
                             _correct(_fixed_vote(values, order[:k]), gold))
            for k in range(1, min(max(ks, default=1) + 1, len(order)) + 1)
        }
    out = [
        PolicyOutcome("best single", "best_single", 1, one, _correct(values[:, best_single], gold)),
        PolicyOutcome("reward model", "reward_model", 1, one, _correct(values[rows, rank[:, 0]], gold)),
    ]
    rng = np.random.default_rng(grid.seed)
    for k in ks:
        if k > P:
            continue
        top = np.array([vote(values[u], rank[u, :k]) for u in range(U)])
        out.append(PolicyOutcome(f"vote {k} (reward model)", "vote_ranked", k, k * one, _correct(top, gold)))
        out.extend(references[f][k] for f in FIXED_SETS if k in references[f])
        rand = np.array([vote(values[u], rng.permutation(P)[:k]) for u in range(U)])
        out.append(PolicyOutcome(f"vote {k} (random)", "vote_random", k, k * one, _correct(rand, gold)))
        for t in thresholds:
            unsure = confidence < t
            picked = values[rows, rank[:, 0]].copy()
            for u in np.flatnonzero(unsure):
                picked[u] = vote(values[u], rank[u, : k + 1])
            out.append(PolicyOutcome(f"cascade {k}, T={t}", "cascade", k + 1, 1 + k * unsure.astype(float),
                                     _correct(picked, gold)))
    return out, references


def policy_points(policies: list[PolicyOutcome]) -> list[dict]:
    """Points ``{policy, kind, calls_per_query, accuracy}`` of policies (e.g. :func:`policy_outcomes`'s)."""
    return [{"policy": p.policy, "kind": p.kind, "calls_per_query": p.calls_per_query, "accuracy": p.accuracy}
            for p in policies]


def _diff(a: np.ndarray, b: np.ndarray, n_boot: int) -> dict:

    lo, hi = paired_bootstrap_ci(a, b, n_boot=n_boot)
    return {"diff": float(np.mean(a - b)), "ci95": [lo, hi]}


def compare_policies(runs: list[tuple[list[PolicyOutcome], dict]], n_boot: int = 2000) -> list[dict]:
    """One point per policy over one or more runs (one per model seed), with paired-bootstrap 95% CIs.

    Each run is :func:`policy_outcomes`'s result for one model on the same queries. A
    policy's per-query outcome is averaged over the runs; its ``accuracy`` and
    ``calls_per_query`` are the run means, ``accuracy_sd`` their spread (sample sd).
    ``vs_best_single`` is the difference to the best single prompt; ``vs_fixed_vote[family]``
    the difference to the fixed-set vote of that family with the fewest calls that are at
    least the policy's mean calls per query (k = ceil(calls)), None where the family has
    too few prompts. CIs resample queries in pairs (:func:`oirl_fast.metrics.paired_bootstrap_ci`).
    """
    names = [p.policy for p in runs[0][0]]
    by_name = [{p.policy: p for p in policies} for policies, _ in runs]

    def mean_correct(get) -> np.ndarray:
        return np.mean([get(i).correct for i in range(len(runs))], axis=0)

    best = mean_correct(lambda i: by_name[i]["best single"])
    points = []
    for name in names:
        per_run = [by_name[i][name] for i in range(len(runs))]
        a = mean_correct(lambda i: by_name[i][name])
        accs = [p.accuracy for p in per_run]
        calls = float(np.mean([p.calls_per_query for p in per_run]))
        k_ref = max(1, int(np.ceil(calls - 1e-9)))
        vs_fixed = {}
        for family in FIXED_SETS:
            if all(k_ref in refs[family] for _, refs in runs):
                ref = mean_correct(lambda i: runs[i][1][family][k_ref])
                vs_fixed[family] = {"reference": runs[0][1][family][k_ref].policy, "calls": k_ref,
                                    "accuracy": float(ref.mean()), **_diff(a, ref, n_boot)}
            else:
                vs_fixed[family] = None
        points.append({
            "policy": name,
            "kind": per_run[0].kind,
            "calls_per_query": calls,
            "accuracy": float(np.mean(accs)),
            "accuracy_per_seed": accs,
            "accuracy_sd": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
            "vs_best_single": _diff(a, best, n_boot),
            "vs_fixed_vote": vs_fixed,
        })
    return points


def pareto_front(points: list[dict]) -> list[dict]:
    """Points no other point beats on both fewer calls and higher accuracy, by calls."""
    front = []
    for p in sorted(points, key=lambda p: (p["calls_per_query"], -p["accuracy"])):
        if not front or p["accuracy"] > front[-1]["accuracy"]:
            front.append(p)
    return front


def _seed_models(artifact, table, embedder, seeds: int) -> list:
    """The artifact's model and the same model refitted with seeds 1..seeds-1 on the same split."""

    models = [artifact.model]
    if seeds > 1:
        protocol = Protocol(**artifact.metadata.protocol)
        for s in range(1, seeds):
            fitted = fit_reward_model(table, protocol, replace(artifact.model.config, seed=s), embedder, lambda *_: None)
            if sorted(fitted.metadata.prompt_ids) != sorted(artifact.metadata.prompt_ids):
                raise OirlError(f"the log's prompts {fitted.metadata.prompt_ids} differ from the model's "
                                f"{artifact.metadata.prompt_ids}; refitting other seeds needs the model's own log",
                                artifact.path / "metadata.json")
            models.append(fitted.model)
    return models


@dataclass
class Simulation:
    """What :func:`simulate` computed: the logged ``answers`` (columns in the model's prompt order), one
    ``runs`` entry per model seed (:func:`policy_outcomes`'s result), and the first model's float64 (U, P)
    ``scores``."""

    answers: object
    runs: list
    scores: np.ndarray
    dataset: str


def simulate(model_dir, embedder, answers_from: AnswerSource = AnswerSource(), seeds: int = 1,
             progress=lambda *_: None) -> Simulation:
    """Every policy's per-query outcome on the logged answers ``answers_from`` names, for the artifact's
    model and ``seeds`` - 1 refits (see :func:`run_tradeoff`). Prompts are ranked in the model's own
    prompt order, as ``oirl answer`` ranks them (:func:`oirl_fast.ranking.rank_prompts`), so ties
    between prompts break the same way."""
    source, dataset, limit, log = answers_from.source, answers_from.dataset, answers_from.limit, answers_from.log
    if seeds < 1:
        raise OirlError(f"--seeds must be at least 1, got {seeds}")
    artifact = load_artifact(model_dir, embedding_model=embedder.model_id)
    if getattr(embedder, "encoder", None) is not None:

        check_same_encoder(artifact.metadata.embedder_record, embedder.encoder, artifact.path / "metadata.json")
    if log is not None:
        answers = log_answers(log, artifact.metadata.protocol, artifact.metadata.prompt_ids, limit)
    else:
        if dataset != "gsm8k":
            raise OirlError(f"the {dataset} logs hold verdicts but no answer texts, so votes cannot be simulated; "
                            "only gsm8k has logged answers (or pass --log with a log that keeps responses)")
        answers = published_answers(source, limit)
        if sorted(answers.prompt_ids) != sorted(artifact.metadata.prompt_ids):
            raise OirlError(f"model was built for prompts {artifact.metadata.prompt_ids}, the answers cover "
                            f"{answers.prompt_ids}", artifact.path / "metadata.json")
        answers = answers.in_order(artifact.metadata.prompt_ids)
    if seeds > 1:
        progress(f"refitting the model with seeds 1..{seeds - 1} on its own split")
        table = read_logs(log) if log is not None else import_published("gsm8k", source)
        models = _seed_models(artifact, table, embedder, seeds)
    else:
        models = [artifact.model]
    queries = embedder.embed(answers.queries)
    runs, first_scores = [], None
    for s, model in enumerate(models):
        # the artifact's model through its fastest route, the refitted seeds (in memory) through theirs
        scorer = (Scorer.for_artifact(artifact) if model is artifact.model
                  else Scorer.for_model(model, queries.shape[1], model_candidates(artifact)))
        ranking = rank_prompts(scorer.scores(queries, dtype=np.float64), model.calibrator)
        first_scores = ranking.scores if first_scores is None else first_scores
        runs.append(policy_outcomes(answers.values, answers.gold, ranking.scores, ranking.confidence,
                                    answers.best_single, PolicyGrid(seed=s), answers.train_accuracy))
    return Simulation(answers, runs, first_scores, artifact.metadata.dataset if log is not None else dataset)


def run_tradeoff(model_dir, embedder, answers_from: AnswerSource = AnswerSource(), seeds: int = 1,
                 n_boot: int = 2000, progress=lambda *_: None) -> dict:
    """Simulate the policies with a trained model artifact on logged answers.

    ``answers_from`` (:class:`~oirl_fast.tradeoff_answers.AnswerSource`): the bundled GSM8K answer
    logs (the default), or a ``log`` (any oirl log whose ``response`` column keeps the answers; its
    test queries under the model's protocol), and a ``limit`` on the test queries. ``seeds`` > 1
    refits the model with seeds 1..seeds-1 on the same split (the split itself is not re-drawn) and
    reports every policy's mean and spread over the seeds; CIs are over the per-query seed means.
    """
    sim = simulate(model_dir, embedder, answers_from, seeds, progress)
    answers, runs, first_scores = sim.answers, sim.runs, sim.scores
    ours = np.isclose(answers.values, answers.gold[:, None]) & ~np.isnan(answers.values)
    points = compare_policies(runs, n_boot=n_boot)
    # The prompt orders the fixed sets are cut from (the model-mean one: the artifact's model, seed 0).
    fixed = {family: [answers.prompt_ids[j] for j in o]
             for family, o in fixed_orders(first_scores, answers.train_accuracy, answers.best_single).items()}
    return {
        "dataset": sim.dataset,
        "model": str(model_dir),
        "n_queries": len(answers.queries),
        "n_prompts": len(answers.prompt_ids),
        "grader_agreement_with_published_verdicts": float(np.mean(ours == answers.verdicts)),
        "seeds": len(runs),
        "seed_variation": "model refitted with seeds 0..K-1 on the model's own split (split not re-drawn)"
        if len(runs) > 1 else "one model (the artifact's)",
        "fixed_sets": fixed,
        "points": points,
        "pareto_front": [p["policy"] for p in pareto_front(points)],
    }


def plot_tradeoff(result: dict, path) -> None:
    matplotlib = require("matplotlib", "drawing the figures")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
