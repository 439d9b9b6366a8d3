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
from oirl_fast.collect.published import load_questions
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


def test_retry_asks_the_next_pick_where_the_logged_critique_doubts_the_answer(gsm8k_model, answers_log, cache_dir,
                                                                                tmp_path):
    from oirl_fast import api
    from oirl_fast.schema import read_logs

    report, rows = _run("retry:2", gsm8k_model, answers_log, tmp_path / "run", cache_dir, critique=True,
                        critique_threshold=0.75, limit=200)
    table = read_logs(answers_log)
    logged = {(q, p): c for q, p, c in zip(*(table.column(n).to_pylist() for n in ("query_id", "prompt_id",
                                                                                     "confidence")))}
    model = api.load(gsm8k_model, cache_dir=cache_dir)
    picks = model.pick([r["query"] for r in rows], top_k=3)
    n_calls = []
    for row, ranked in zip(rows, picks.ids):
        calls = row["calls"]
        assert [c["critique"] for c in calls] == [logged[(row["query_id"], c["prompt_id"])] for c in calls]
        kept = [c["value"] is not None and c["critique"] >= 0.75 for c in calls]
        n = kept.index(True) + 1 if True in kept else 3
        assert [c["prompt_id"] for c in calls] == list(ranked[:n])
        if True not in kept:  # none kept: the readable answer its critique doubted least
            best = max((c["critique"], -i) for i, c in enumerate(calls) if c["value"] is not None)
            assert row["answer"] == calls[-best[1]]["value"]
        n_calls.append(n)
    assert 1 < np.mean(n_calls) < 3 and report["calls_per_query"] == np.mean(n_calls)
    assert report["critique_calls_per_query"] == report["calls_per_query"]


def test_prompt_ties_break_by_the_models_prompt_order_in_both(gsm8k_model, answers_log, cache_dir, reseal, tmp_path):
    """Equal scores are common with tree models. Tradeoff used to rank in the answer files' prompt order,
    answer (and Model.pick) in the model's: with a model listing its prompts in another order they picked
    different prompts on tied queries. Now both rank in the model's order. The model here lists the
    16 prompts reversed and gives its most frequent top pick's twin (same embedding) to another prompt,
    so every query that pick wins is a tie."""
    import shutil

    from oirl_fast import api
    from oirl_fast.tradeoff import simulate
    from oirl_fast.tradeoff_answers import AnswerSource
    from oirl_fast.train import artifact as art

    flipped = tmp_path / "flipped"
    shutil.copytree(gsm8k_model, flipped)
    emb = np.ascontiguousarray(np.load(flipped / art.PROMPT_EMB_FILE)[::-1])
    meta = json.loads((flipped / "metadata.json").read_text())
    meta["prompts"] = meta["prompts"][::-1]
    model = api.load(gsm8k_model, cache_dir=cache_dir)
    queries = [q.query for q in load_questions("gsm8k") if q.split == "test"][:200]
    top = np.bincount(model.pick(queries, top_k=1).indices[:, 0], minlength=16).argmax()
    j = 15 - int(top)  # its row once reversed
    k = j + 1 if j < 15 else j - 1
    emb[k] = emb[j]
    np.save(flipped / art.PROMPT_EMB_FILE, emb)
    meta["prompt_embeddings_sha256"] = art.embeddings_hash(emb)
    (flipped / "metadata.json").write_text(json.dumps(meta))
    reseal(flipped)

    flipped_model = api.load(flipped, cache_dir=cache_dir)
    sim = simulate(flipped, flipped_model.embedder, AnswerSource(limit=200))
    assert sim.answers.prompt_ids == flipped_model.prompt_ids
    top2 = np.sort(sim.scores, axis=1)[:, -2:]
    assert np.sum(top2[:, 0] == top2[:, 1]) > 10  # the case this test is about
    picks = flipped_model.pick(sim.answers.queries, top_k=1)
    _, rows = _run("best", flipped, answers_log, tmp_path / "run", cache_dir, limit=200)
    assert [r["calls"][0]["prompt_id"] for r in rows] == list(picks.ids[:, 0])
    sim_best = {p.policy: p for p in sim.runs[0][0]}["reward model"]
    assert [r["correct"] for r in rows] == list(sim_best.correct)
