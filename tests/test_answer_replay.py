"""`oirl answer --backend replay:LOG` against `oirl tradeoff` on the bundled GSM8K answers, to the last question.

Both read the same 16 x 1000 logged answers with the same reward model (conftest's
``gsm8k_model``): tradeoff simulates the policies, answer runs them through the replay
backend. Every query's verdict and number of calls must agree, and so must the aggregate
accuracy and calls per query that ``oirl tradeoff --json`` prints.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from oirl_fast.answer.policies import parse_policy
from oirl_fast.answer.run import AnswerConfig, answer
from oirl_fast.cli import app
from oirl_fast.collect.published import import_published
from oirl_fast.schema import write_logs

runner = CliRunner()


@pytest.fixture(scope="module")
def answers_log(tmp_path_factory):
    """The bundled GSM8K log with the published answer texts (`oirl import gsm8k --answers`)."""
    path = tmp_path_factory.mktemp("replay") / "gsm8k-answers.parquet"
    res = runner.invoke(app, ["import", "gsm8k", "--answers", "--out", str(path)])
    assert res.exit_code == 0, res.output
    return path


@pytest.fixture(scope="module")
def simulation(gsm8k_model, cache_dir):
    from oirl_fast import api
    from oirl_fast.tradeoff import simulate

    embedder = api.load(gsm8k_model, cache_dir=cache_dir).embedder
    return simulate(gsm8k_model, embedder)


@pytest.fixture(scope="module")
def tradeoff_points(gsm8k_model, cache_dir):
    res = runner.invoke(app, ["tradeoff", "--model", str(gsm8k_model), "--json", "--cache-dir", str(cache_dir)])
    assert res.exit_code == 0, res.output
    return {p["policy"]: p for p in json.loads(res.stdout)["points"]}


def _cascade_spec(simulation) -> str:
    """cascade:3:T with the first of tradeoff's thresholds at which some queries, not all, are unsure,
    so the test covers both branches."""
    by = {p.policy: p for p in simulation.runs[0][0]}
    for t in (0.2, 0.3, 0.4, 0.5):
        calls = by[f"cascade 3, T={t}"].calls
        if 0 < np.mean(calls > 1) < 1:
            return f"cascade:3:{t}"
    pytest.fail("no threshold splits the queries")


def _run(spec, model, log, out, cache_dir, **kw):
    cfg = AnswerConfig(model=model, queries="gsm8k", split="test", policy=spec, out=out,
                       backend=f"replay:{log}", cache_dir=cache_dir, **kw)
    report = answer(cfg)
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    return report, rows


@pytest.mark.parametrize("spec", ["best", "vote:3", "vote:5", "cascade"])
def test_replay_reproduces_tradeoff_to_the_last_question(spec, gsm8k_model, answers_log, simulation,
                                                         tradeoff_points, cache_dir, tmp_path):
    if spec == "cascade":
        spec = _cascade_spec(simulation)
    policy = parse_policy(spec)
    report, rows = _run(spec, gsm8k_model, answers_log, tmp_path / "run", cache_dir,
                        compare_best_single=spec == "best")
    sim = {p.policy: p for p in simulation.runs[0][0]}[policy.tradeoff_name]
    ids = simulation.answers.query_ids
    assert len(rows) == len(ids) == 1000
    by_id = {r["query_id"]: r for r in rows}
    ours_correct = np.array([by_id[q]["correct"] for q in ids])
    ours_calls = np.array([by_id[q]["n_calls"] for q in ids])
    wrong = np.flatnonzero(ours_correct != sim.correct)
    assert not len(wrong), f"{len(wrong)} verdicts differ, first on {ids[wrong[0]]}"
    assert np.array_equal(ours_calls, sim.calls)
    # the aggregate figures oirl tradeoff prints
    point = tradeoff_points[policy.tradeoff_name]
    assert report["accuracy"] == point["accuracy"] and report["calls_per_query"] == point["calls_per_query"]
    extra = sum(r["best_single"]["prompt_id"] not in [c["prompt_id"] for c in r["calls"]]
                for r in rows if "best_single" in r)  # the comparison asks the best single prompt where the policy did not
    assert report["llm_calls"] == report["calls_made_now"] == ours_calls.sum() + extra
    for r in rows[:50]:  # the prompts called are the model's picks, best first
        assert [c["rank"] for c in r["calls"]] == list(range(r["n_calls"]))
    if spec == "best":  # the best single prompt: the one best on the training rows, as tradeoff takes it
        best = tradeoff_points["best single"]
        assert report["best_single"]["prompt_id"] == simulation.answers.prompt_ids[simulation.answers.best_single]
        assert report["best_single"]["accuracy"] == best["accuracy"]
        assert report["vs_best_single"]["diff"] == pytest.approx(point["accuracy"] - best["accuracy"])


def test_replay_refuses_a_pair_the_log_lacks(gsm8k_model, answers_log, cache_dir, tmp_path):
    from oirl_fast.schema import read_logs

    table = read_logs(answers_log)
    keep = pc.invert(pc.and_(pc.equal(table.column("query_id"), "gsm8k:test:1"),
                             pc.equal(table.column("prompt_id"), "CoT")))
    small = table.filter(pc.and_(keep, pc.is_in(table.column("query_id"),
                                                 pa.array([f"gsm8k:test:{i}" for i in range(3)]))))
    write_logs(small, tmp_path / "small.parquet")
    res = runner.invoke(app, ["answer", str(gsm8k_model), "--queries", "gsm8k", "--split", "test", "--limit", "3",
                              "--policy", "vote:16", "--backend", f"replay:{tmp_path / 'small.parquet'}",
                              "--out", str(tmp_path / "run"), "--cache-dir", str(cache_dir), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "small.parquet" in res.stderr and "no answer for query 'gsm8k:test:1' with prompt 'CoT'" in res.stderr
