import numpy as np
import pytest

from oirl_fast.collect.published import last_number, load_gsm8k_answers, load_prompts
from oirl_fast.tradeoff import compare_policies, pareto_front, PolicyGrid, policy_outcomes, policy_points, vote

nan = float("nan")


def test_last_number_tolerates_formatting():
    assert last_number("so she makes $1,234.0 a day") == 1234.0
    assert last_number("The answer is 18.") == 18.0
    assert last_number("-3 degrees") == -3.0
    assert last_number("no digits here") is None


def test_vote_majority_and_documented_ties():
    vals = np.array([5.0, 7.0, 7.0, nan, 5.0])
    assert vote(vals, np.array([0, 1, 2])) == 7.0  # 7 twice
    assert vote(vals, np.array([0, 1])) == 5.0  # tie: the earlier-ranked prompt's answer
    assert vote(vals, np.array([1, 0])) == 7.0
    assert vote(vals, np.array([3, 4])) == 5.0  # NaN does not vote
    assert np.isnan(vote(vals, np.array([3])))


def test_policy_points_small_hand_case():
    # 2 queries, 3 prompts; gold 1 and 2
    values = np.array([[1.0, 9.0, 1.0], [5.0, 2.0, 2.0]])
    gold = np.array([1.0, 2.0])
    scores = np.array([[0.1, 0.9, 0.5], [0.9, 0.2, 0.1]])  # the model picks wrongly on both
    conf = np.array([0.9, 0.1])
    policies, _ = policy_outcomes(values, gold, scores, conf, best_single=2,
                                  grid=PolicyGrid(ks=(2,), thresholds=(0.5,)))
    pts = {p["policy"]: p for p in policy_points(policies)}
    assert pts["best single"]["accuracy"] == 1.0
    assert pts["reward model"]["accuracy"] == 0.0
    # vote over top-2 by score: q0 {9,1} tie -> 9 (rank 0); q1 {5,2} tie -> 5
    assert pts["vote 2 (reward model)"]["accuracy"] == 0.0
    # cascade: only q1 is unsure, votes over its top 3 {5,2,2} -> 2 (right); q0 keeps 9 (wrong)
    assert pts["cascade 2, T=0.5"]["accuracy"] == 0.5
    assert pts["cascade 2, T=0.5"]["calls_per_query"] == pytest.approx(1 + 2 * 0.5)


def _three_way_table(U=30):
    """Gold 1 everywhere; prompt j in 0..2 is wrong exactly on queries u % 3 == j, prompt 3 always wrong;
    every wrong answer is a number of its own, so wrong answers never agree."""
    u = np.arange(U)
    values = np.array([[1.0 if (j < 3 and u_ % 3 != j) else 1000.0 * (j + 1) + u_ for j in range(4)] for u_ in u])
    return values, np.ones(U)


def test_fixed_set_votes_on_a_table_with_known_answers():
    values, gold = _three_way_table()
    train_acc = np.array([0.7, 0.6, 0.5, np.nan])  # order of the training set: 0, 1, 2 (3 has no training rows)
    scores = np.tile([0.1, 0.2, 0.3, 0.9], (len(gold), 1))  # the model's mean order: 3, 2, 1, 0
    policies, refs = policy_outcomes(values, gold, scores, np.full(len(gold), 0.9), best_single=0,
                                     grid=PolicyGrid(ks=(3,), thresholds=(0.5,)), train_accuracy=train_acc)
    train, model = refs["best_on_train"], refs["model_mean"]
    assert sorted(train) == [1, 2, 3] and sorted(model) == [1, 2, 3, 4]  # k up to max(ks) + 1, as far as prompts go
    assert train[1].accuracy == pytest.approx(2 / 3)  # prompt 0 alone
    assert train[3].accuracy == 1.0  # two of prompts 0, 1, 2 are right on every query
    # {0, 1}: on u % 3 == 0 the tie goes to prompt 0 (better on train), which is wrong
    assert train[2].accuracy == pytest.approx(2 / 3)
    assert model[1].accuracy == 0.0  # prompt 3
    # {3, 2, 1}: right only where prompts 1 and 2 agree (u % 3 == 0); elsewhere a three-way tie goes to 3
    assert model[3].accuracy == pytest.approx(1 / 3)
    by_name = {p.policy: p for p in policies}
    assert by_name["vote 3 (fixed: best on train)"] is train[3]
    assert by_name["vote 3 (fixed: model's mean score)"] is model[3]
    assert all(p.calls_per_query == 3 for p in (train[3], model[3]))
    # the reward model ranks 3, 2, 1 on every query as well: its top-3 vote is the model-mean fixed set
    assert by_name["vote 3 (reward model)"].accuracy == model[3].accuracy


def test_compare_policies_cis_and_references():
    values, gold = _three_way_table(60)
    rng = np.random.default_rng(0)
    train_acc = np.array([0.7, 0.6, 0.5, np.nan])
    runs = []
    for seed in range(2):
        scores = rng.random((len(gold), 4))
        conf = rng.random(len(gold))
        runs.append(policy_outcomes(values, gold, scores, conf, best_single=0,
                                    grid=PolicyGrid(ks=(2, 3), thresholds=(0.3, 0.6), seed=seed),
                                    train_accuracy=train_acc))
    points = {p["policy"]: p for p in compare_policies(runs, n_boot=500)}
    for p in points.values():
        d = p["vs_best_single"]
        assert d["ci95"][0] - 1e-12 <= d["diff"] <= d["ci95"][1] + 1e-12
        assert d["diff"] == pytest.approx(p["accuracy"] - points["best single"]["accuracy"])
        assert len(p["accuracy_per_seed"]) == 2 and p["accuracy"] == pytest.approx(np.mean(p["accuracy_per_seed"]))
        assert p["accuracy_sd"] == pytest.approx(np.std(p["accuracy_per_seed"], ddof=1))
        k = int(np.ceil(p["calls_per_query"] - 1e-9))
        for family, ref in p["vs_fixed_vote"].items():
            if ref is None:  # the training set holds 3 prompts
                assert family == "best_on_train" and k > 3
                continue
            assert ref["calls"] == k >= p["calls_per_query"] - 1e-9
            assert ref["ci95"][0] - 1e-12 <= ref["diff"] <= ref["ci95"][1] + 1e-12
            assert ref["diff"] == pytest.approx(p["accuracy"] - ref["accuracy"])
    fixed3 = points["vote 3 (fixed: best on train)"]
    assert fixed3["accuracy"] == 1.0 and fixed3["accuracy_sd"] == 0.0
    assert fixed3["vs_fixed_vote"]["best_on_train"]["diff"] == 0.0
    assert fixed3["vs_fixed_vote"]["best_on_train"]["ci95"] == [0.0, 0.0]
    # the best single prompt is the size-1 fixed set of the training family
    assert points["reward model"]["vs_fixed_vote"]["best_on_train"]["accuracy"] == points["best single"]["accuracy"]
    # a fixed vote that is always right beats the best single prompt with an interval above zero
    assert fixed3["vs_best_single"]["ci95"][0] > 0


def test_pareto_front():
    pts = [{"policy": "a", "calls_per_query": 1, "accuracy": 0.5}, {"policy": "b", "calls_per_query": 1, "accuracy": 0.6},
           {"policy": "c", "calls_per_query": 3, "accuracy": 0.55}, {"policy": "d", "calls_per_query": 5, "accuracy": 0.7}]
    assert [p["policy"] for p in pareto_front(pts)] == ["b", "d"]


def test_real_answers_agree_with_published_verdicts_mostly():
    from oirl_fast.collect.published import import_published
    import pyarrow.compute as pc

    prompt = next(p for p in load_prompts() if p.id == "CoT")
    answers = load_gsm8k_answers(prompt)
    assert len(answers) == 1000
    log = import_published("gsm8k")
    rows = log.filter(pc.and_(pc.equal(log.column("split"), "test"), pc.equal(log.column("prompt_id"), "CoT")))
    gold = [float(g) for g in rows.column("gold").to_pylist()]
    ours = [last_number(a) == g for a, g in zip(answers, gold)]
    published = rows.column("correct").to_pylist()
    agreement = np.mean(np.array(ours) == np.array(published))
    assert agreement > 0.9  # the published grader also took the last number


def test_tradeoff_command_on_a_real_subset(gsm8k_model, cache_dir, tmp_path):
    import json

    from typer.testing import CliRunner

    from oirl_fast.cli import app

    res = CliRunner().invoke(app, ["tradeoff", "--model", str(gsm8k_model), "--limit", "60", "--json",
                                   "--plot", str(tmp_path / "t.png"), "--cache-dir", str(cache_dir)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["n_queries"] == 60 and out["grader_agreement_with_published_verdicts"] > 0.9
    policies = {p["policy"]: p for p in out["points"]}
    assert policies["best single"]["calls_per_query"] == 1.0 and policies["vote 5 (random)"]["calls_per_query"] == 5.0
    assert all(1.0 <= p["calls_per_query"] <= 6.0 and 0.0 <= p["accuracy"] <= 1.0 for p in out["points"])
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    for k in (3, 5):
        assert policies[f"vote {k} (fixed: best on train)"]["calls_per_query"] == k
        assert policies[f"vote {k} (fixed: model's mean score)"]["kind"] == "vote_fixed_model"
    assert len(out["fixed_sets"]["best_on_train"]) == 6 and len(out["fixed_sets"]["model_mean"]) == 16
    for p in out["points"]:
        for d in [p["vs_best_single"], *[r for r in p["vs_fixed_vote"].values() if r is not None]]:
            assert d["ci95"][0] - 1e-12 <= d["diff"] <= d["ci95"][1] + 1e-12
    assert policies["vote 5 (reward model)"]["vs_fixed_vote"]["model_mean"]["reference"] == \
        "vote 5 (fixed: model's mean score)"
    res = CliRunner().invoke(app, ["tradeoff", "--dataset", "svamp", "--model", str(gsm8k_model)])
    assert res.exit_code == 2 and "no answer texts" in res.stderr


def test_tradeoff_from_a_log_that_keeps_responses(gsm8k_model, cache_dir, tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.compute as pc
    from typer.testing import CliRunner

    from oirl_fast.cli import app
    from oirl_fast.collect.published import import_published
    from oirl_fast.schema import write_logs

    log = import_published("gsm8k")
    test_ids = [f"gsm8k:test:{i}" for i in range(30)]
    train_ids = [f"gsm8k:train:{i}" for i in range(50)]
    sub = log.filter(pc.is_in(log.column("query_id"), pa.array(test_ids + train_ids)))
    answers = {p.id: load_gsm8k_answers(p) for p in load_prompts()}
    responses = [answers[p][int(q.split(":")[-1])] if q.startswith("gsm8k:test") else None
                 for q, p in zip(sub.column("query_id").to_pylist(), sub.column("prompt_id").to_pylist())]
    with_resp = sub.set_column(sub.schema.get_field_index("response"), "response", pa.array(responses, pa.string()))
    write_logs(with_resp, tmp_path / "log.parquet")
    res = CliRunner().invoke(app, ["tradeoff", "--model", str(gsm8k_model), "--log", str(tmp_path / "log.parquet"),
                                   "--json", "--cache-dir", str(cache_dir)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["n_queries"] == 30 and out["grader_agreement_with_published_verdicts"] > 0.9
    assert out["seeds"] == 1
    res = CliRunner().invoke(app, ["tradeoff", "--model", str(gsm8k_model), "--log", str(tmp_path / "log.parquet"),
                                   "--seeds", "2", "--json", "--cache-dir", str(cache_dir)])
    assert res.exit_code == 0, res.output
    seeded = json.loads(res.stdout)
    assert seeded["seeds"] == 2 and "refitted" in seeded["seed_variation"]
    by = {p["policy"]: p for p in seeded["points"]}
    assert all(len(p["accuracy_per_seed"]) == 2 for p in seeded["points"])
    # the best single prompt does not depend on the model; the first seed is the artifact's own model
    assert by["best single"]["accuracy_sd"] == 0.0
    assert by["reward model"]["accuracy_per_seed"][0] == {p["policy"]: p for p in out["points"]}["reward model"]["accuracy"]
    write_logs(sub, tmp_path / "bare.parquet")
    res = CliRunner().invoke(app, ["tradeoff", "--model", str(gsm8k_model), "--log", str(tmp_path / "bare.parquet")])
    assert res.exit_code == 2 and "no responses" in res.stderr and "bare.parquet" in res.stderr


def test_demo_tradeoff_section_is_the_tradeoff_result_against_same_call_baselines(gsm8k_model, embedder, tmp_path):
    """`oirl demo`'s `tradeoff` section: the demo's grouped GSM8K model on the logged answers; each policy against
    the query-independent policy of as many calls, read from the full result it writes beside."""
    import io
    import json
    import shutil

    from rich.console import Console

    from oirl_fast.demo import TRADEOFF_POLICIES, run_demo_tradeoff

    shutil.copytree(gsm8k_model, tmp_path / "gsm8k" / "model")
    figures = run_demo_tradeoff(tmp_path, None, embedder, Console(file=io.StringIO()))
    full = json.loads((tmp_path / "tradeoff" / "gsm8k.json").read_text())
    points = {p["policy"]: p for p in full["points"]}
    assert figures["n_queries"] == full["n_queries"] == 1000 and set(figures["policies"]) == set(TRADEOFF_POLICIES)
    for name, f in figures["policies"].items():
        ref = points[name]["vs_fixed_vote"]["best_on_train"]
        assert f["calls_per_query"] == points[name]["calls_per_query"] == ref["calls"]
        assert f["reference"] == ref["reference"] and f["reference_accuracy"] == ref["accuracy"]
        assert f["diff"] == pytest.approx(f["accuracy"] - f["reference_accuracy"])
        assert f["ci95"][0] - 1e-9 <= f["diff"] <= f["ci95"][1] + 1e-9
    assert figures["policies"]["reward model"]["reference"].startswith("single")
    assert figures["policies"]["reward model"]["reference_accuracy"] == points["best single"]["accuracy"]
