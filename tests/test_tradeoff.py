import numpy as np
import pytest

from oirl_fast.collect.published import last_number, load_gsm8k_answers, load_prompts
from oirl_fast.tradeoff import pareto_front, simulate, vote

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


def test_simulate_small_hand_case():
    # 2 queries, 3 prompts; gold 1 and 2
    values = np.array([[1.0, 9.0, 1.0], [5.0, 2.0, 2.0]])
    gold = np.array([1.0, 2.0])
    scores = np.array([[0.1, 0.9, 0.5], [0.9, 0.2, 0.1]])  # the model picks wrongly on both
    conf = np.array([0.9, 0.1])
    pts = {p["policy"]: p for p in simulate(values, gold, scores, conf, best_single=2, ks=(2,), thresholds=(0.5,))}
    assert pts["best single"]["accuracy"] == 1.0
    assert pts["reward model"]["accuracy"] == 0.0
    # vote over top-2 by score: q0 {9,1} tie -> 9 (rank 0); q1 {5,2} tie -> 5
    assert pts["vote 2 (reward model)"]["accuracy"] == 0.0
    # cascade: only q1 is unsure, votes over its top 3 {5,2,2} -> 2 (right); q0 keeps 9 (wrong)
    assert pts["cascade 2, T=0.5"]["accuracy"] == 0.5
    assert pts["cascade 2, T=0.5"]["calls_per_query"] == pytest.approx(1 + 2 * 0.5)


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


@pytest.fixture(scope="module")
def gsm8k_model(real_pairs, embedder, tmp_path_factory):
    """A small reward model over the 16 GSM8K prompts, trained on real test-set pairs."""
    from oirl_fast.features import FeatureLayout
    from oirl_fast.train import artifact as art
    from oirl_fast.train.reward_model import RewardModel, TrainConfig

    X, y = real_pairs
    prompts = load_prompts()
    p_emb = embedder.embed([p.text for p in prompts])
    model = RewardModel(TrainConfig(n_estimators=20)).fit(X, y)
    meta = art.ModelMetadata(
        dataset="gsm8k", backend="lightgbm", embedding_model=embedder.model_id,
        feature_layout=FeatureLayout(384, 384).to_dict(),
        prompts=[{"id": p.id, "text": p.text, "seen_in_training": p.role == "train"} for p in prompts],
        prompt_embeddings_sha256=art.embeddings_hash(p_emb), protocol={"name": "published"},
        train_config=model.config.to_dict(), best_iteration=model.best_iteration, n_train_examples=len(y),
        calibration=model.calibrator.to_dict(),
    )
    out = tmp_path_factory.mktemp("tradeoff") / "m"
    art.save_artifact(out, model, meta, p_emb, compile_library=False)
    return out


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
    write_logs(sub, tmp_path / "bare.parquet")
    res = CliRunner().invoke(app, ["tradeoff", "--model", str(gsm8k_model), "--log", str(tmp_path / "bare.parquet")])
    assert res.exit_code == 2 and "no responses" in res.stderr and "bare.parquet" in res.stderr
