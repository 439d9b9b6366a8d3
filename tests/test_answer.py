"""`oirl answer` with a real (tiny, random) LLM on the transformers backend: the mechanics.

The LLM is tests/tiny_lm.py's (nothing downloaded, no generation faked); the reward model is
conftest's ``make_artifact`` (4 prompts). A spy around the backend records every prompt the
LLM is given, so the tests check the exact calls each policy makes (against the public API's
ranking), that every prompt asked is recorded, and that kill -9 + --resume neither repeats
nor loses a call.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from oirl_fast import api
from oirl_fast.answer.policies import majority
from oirl_fast.answer.run import AnswerConfig, answer
from oirl_fast.cli import app
from oirl_fast.collect.backends import EngineConfig, TransformersBackend
from oirl_fast.collect.graders import last_number
from oirl_fast.collect.requests import QueryItem, PromptItem, critique_messages, encode, messages_for

from tiny_lm import build_tiny_lm

runner = CliRunner()

QUERIES = [
    ("q1", "tom has 3 apples and eats 1 . how many apples left ?", "2"),
    ("q2", "tom has 5 apples and gives 2 . how many apples left ?", "3"),
    ("q3", "how many apples does tom have ? 4 + 4", "8"),
    ("q4", "tom has 7 apples and eats 7 . how many apples left ?", "0"),
    ("q5", "tom has 9 apples and gives 4 . how many apples left ?", "5"),
]


class Spy:
    """A backend that passes everything to a real one and records every prompt (token ids) it is given."""

    def __init__(self, inner):
        self.inner, self.name, self.tokenizer = inner, inner.name, inner.tokenizer
        self.asked: list[tuple[int, ...]] = []

    def generate(self, prompts, params, seeds):
        self.asked += [tuple(p) for p in prompts]
        return self.inner.generate(prompts, params, seeds)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm") / "tiny-llama")


@pytest.fixture(scope="module")
def reward_model(make_artifact, tmp_path_factory):
    return make_artifact(tmp_path_factory.mktemp("answer-model") / "m", n_estimators=10, n_prompts=4)


@pytest.fixture(scope="module")
def spy(tiny_model):
    return Spy(TransformersBackend(str(tiny_model), EngineConfig(device="cpu", batch_size=3)))


@pytest.fixture(scope="module")
def ranked(reward_model, cache_dir):
    """query id -> the model's prompt ids best first, from the public API (Model.pick)."""
    model = api.load(reward_model, cache_dir=cache_dir)
    picks = model.pick([q for _, q, _ in QUERIES], top_k=model.n_prompts)
    return {qid: list(picks.ids[i]) for i, (qid, _, _) in enumerate(QUERIES)}


def write_queries(path: Path, gold=lambda a: a) -> Path:
    rows = [{"id": i, "query": q, **({"answer": gold(a)} if gold(a) is not None else {})} for i, q, a in QUERIES]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run(spy, reward_model, cache_dir, out, policy, queries, **kw):
    before = len(spy.asked)
    # sampled: the random tiny LM says no number at all when greedy
    kw = {"max_tokens": 3, "temperature": 1.0, "llm": "unused: a backend is given", **kw}
    cfg = AnswerConfig(model=reward_model, queries=str(queries), policy=policy, out=out, backend="transformers",
                       shard_size=4, cache_dir=cache_dir, **kw)
    report = answer(cfg, backend=spy)
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    return report, rows, spy.asked[before:]


def rendered(tok, row, prompt_id, texts):
    q = QueryItem(row["query_id"], row["query"], row["gold"], "q")
    return messages_for(q, PromptItem(prompt_id, texts[prompt_id]))


def check_recorded(spy, reward_model, rows, asked, critique=False):
    """The prompts the LLM was given are exactly the recorded calls (and their critiques), each once."""
    model = api.load(reward_model)
    texts = dict(zip(model.prompt_ids, model.prompt_texts))
    tok = spy.tokenizer
    expected = collections.Counter()
    for row in rows:
        calls = [(c["prompt_id"], c["response"]) for c in row["calls"]]
        if "best_single" in row and row["best_single"]["prompt_id"] not in [p for p, _ in calls]:
            calls.append((row["best_single"]["prompt_id"], row["best_single"]["response"]))
        for pid, response in calls:
            msgs = rendered(tok, row, pid, texts)
            expected[tuple(encode(tok, msgs, True))] += 1
            if critique:
                expected[tuple(encode(tok, critique_messages(msgs, response), True))] += 1
    assert collections.Counter(asked) == expected


def test_each_policy_makes_exactly_its_calls(spy, reward_model, ranked, cache_dir, tmp_path):
    queries = write_queries(tmp_path / "q.jsonl")
    for policy, n_calls in [("best", 1), ("vote:3", 3), ("cascade:2:0", 1), ("cascade:2:1", 3)]:
        report, rows, asked = run(spy, reward_model, cache_dir, tmp_path / policy.replace(":", "-"), policy, queries)
        assert [r["query_id"] for r in rows] == [q for q, _, _ in QUERIES]
        for row in rows:
            assert [c["prompt_id"] for c in row["calls"]] == ranked[row["query_id"]][:n_calls]
            assert [c["rank"] for c in row["calls"]] == list(range(n_calls)) and row["n_calls"] == n_calls
            values = [last_number(c["response"]) for c in row["calls"]]
            assert [c["value"] for c in row["calls"]] == values
            win = majority(values)
            assert row["answer"] == (None if win is None else values[win])
            assert row["correct"] == (row["answer"] is not None and row["answer"] == float(row["gold"]))
        assert report["calls_per_query"] == n_calls and report["calls_made_now"] == len(asked) == n_calls * len(rows)
        assert report["accuracy"] == sum(r["correct"] for r in rows) / len(rows)
        check_recorded(spy, reward_model, rows, asked)


def test_retry_on_unreadable_answers_and_on_the_critique(spy, reward_model, ranked, cache_dir, tmp_path):
    # choice grader: the tiny LM's vocabulary has no letter A-E, so no answer is ever readable: K more calls
    letters = write_queries(tmp_path / "letters.jsonl", gold=lambda a: "B")
    report, rows, asked = run(spy, reward_model, cache_dir, tmp_path / "choice", "retry:2", letters, grader="choice")
    for row in rows:
        assert [c["prompt_id"] for c in row["calls"]] == ranked[row["query_id"]][:3]
        assert row["answer"] is None and row["correct"] is False
    assert report["calls_made_now"] == len(asked) == 3 * len(rows) and report["unanswered"] == len(rows)
    check_recorded(spy, reward_model, rows, asked)

    # numeric grader with the critique: a call is kept when it holds a number and its critique is not below 0.5
    # (the tiny LM's greedy critiques hold no number; the replay tests cover critiques that doubt an answer)
    numbers = write_queries(tmp_path / "numbers.jsonl")
    report, rows, asked = run(spy, reward_model, cache_dir, tmp_path / "critique", "retry:3", numbers,
                              critique=True, max_tokens=1)
    kinds = collections.Counter()
    for row in rows:
        calls = row["calls"]
        kept = [c["value"] is not None and (c["critique"] is None or c["critique"] >= 0.5) for c in calls]
        n = kept.index(True) + 1 if True in kept else 4
        assert [c["prompt_id"] for c in calls] == ranked[row["query_id"]][:n]
        kinds["retried" if n > 1 else "first"] += 1
    assert kinds["retried"] and kinds["first"], kinds  # both branches ran on this model
    assert report["critique_calls_per_query"] == report["calls_per_query"]
    assert report["calls_made_now"] * 2 == len(asked)  # one critique per answer
    check_recorded(spy, reward_model, rows, asked, critique=True)


def test_unlabelled_queries_and_the_best_single_comparison(spy, reward_model, ranked, cache_dir, tmp_path):
    queries = write_queries(tmp_path / "q.jsonl", gold=lambda a: None)
    report, rows, asked = run(spy, reward_model, cache_dir, tmp_path / "run", "vote:2", queries,
                              compare_best_single=True, best_single="p3")
    assert report["accuracy"] is None and report["graded"] == 0 and report["best_single"]["prompt_id"] == "p3"
    extra = 0
    for row in rows:
        assert row["gold"] is None and row["correct"] is None
        assert all(c["correct"] is None for c in row["calls"]) and row["n_calls"] == 2
        extra += "p3" not in ranked[row["query_id"]][:2]  # asked only where the vote did not ask it
        assert row["best_single"]["prompt_id"] == "p3"
    assert report["calls_made_now"] == len(asked) == 2 * len(rows) + extra == report["llm_calls"]
    check_recorded(spy, reward_model, rows, asked)


def snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted((folder / "shards").glob("*.parquet"))}


def test_kill9_then_resume_neither_repeats_nor_loses_a_call(spy, tiny_model, reward_model, ranked, cache_dir,
                                                            tmp_path):
    queries = write_queries(tmp_path / "q.jsonl")
    out = tmp_path / "run"
    args = ["answer", str(reward_model), "--queries", str(queries), "--policy", "vote:3", "--out", str(out),
            "--backend", "transformers", "--llm", str(tiny_model), "--max-tokens", "24", "--shard-size", "2",
            "--batch-size", "2", "--device", "cpu", "--cache-dir", str(cache_dir), "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "oirl_fast.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    index = out / "index.jsonl"
    deadline = time.monotonic() + 180
    try:
        while True:
            assert proc.poll() is None, f"answer ended before it could be killed: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "no shard finished in time"
            if index.is_file() and index.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL and not (out / "answers.jsonl").exists()
    before = snapshot(out)
    done = [tuple(k) for line in index.read_text().splitlines() for k in json.loads(line)["keys"]]
    total = 3 * len(QUERIES)
    assert 1 <= len(done) < total, "the kill should land between the first and the last call"

    # another policy in the same folder is refused, and nothing is written
    res = runner.invoke(app, [*args[:5], "vote:2", *args[6:], "--resume"])
    assert res.exit_code == 2 and "another answer run" in res.stderr and snapshot(out) == before

    same = dict(max_tokens=24, temperature=0.0, llm=str(tiny_model), resume=True)  # the killed run's settings
    report, rows, asked = run(spy, reward_model, cache_dir, out, "vote:3", queries, **same)
    assert report["calls_resumed"] == len(done) and report["calls_made_now"] == len(asked) == total - len(done)
    made_now = {(r["query_id"], c["prompt_id"]) for r in rows for c in r["calls"]} - set(done)
    assert len(made_now) == len(asked)  # nothing asked before the kill was asked again
    for row in rows:
        assert [c["prompt_id"] for c in row["calls"]] == ranked[row["query_id"]][:3]
    after = snapshot(out)
    assert all(after[name] == before[name] for name in before)  # shards from before the kill untouched
    keys = [tuple(k) for line in index.read_text().splitlines() for k in json.loads(line)["keys"]]
    assert sorted(keys) == sorted({(q, p) for q, _, _ in QUERIES for p in ranked[q][:3]})  # each call once

    # a finished run resumed again asks nothing
    report, _, asked = run(spy, reward_model, cache_dir, out, "vote:3", queries, **same)
    assert asked == [] and report["calls_made_now"] == 0 and report["calls_resumed"] == total


def test_bad_input_is_one_line_and_writes_nothing(reward_model, tiny_model, cache_dir, tmp_path):
    queries = write_queries(tmp_path / "q.jsonl")
    out = tmp_path / "run"
    base = ["answer", str(reward_model), "--queries", str(queries), "--out", str(out), "--cache-dir", str(cache_dir),
            "--no-progress"]
    for extra, message in [
        (["--policy", "median"], "unknown policy 'median'; choose one of best, vote:K, cascade:K:T, retry:K"),
        (["--policy", "vote:x"], "K must be an integer"),
        (["--policy", "cascade:2:1.5"], "T is a probability"),
        (["--policy", "vote:9", "--backend", "transformers", "--llm", str(tiny_model)], "the model ranks 4"),
        (["--backend", "transformers"], "needs the LLM: --llm"),
        (["--backend", f"replay:{tmp_path / 'none.parquet'}"], "replay log not found"),
        (["--backend", "transformers", "--llm", str(tiny_model), "--compare-best-single"], "needs --best-single"),
        (["--backend", "transformers", "--llm", str(tiny_model), "--best-single", "nope"], "'nope' is not one of"),
    ]:
        res = runner.invoke(app, [*base, *extra])
        assert res.exit_code == 2, (extra, res.output)
        assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, (extra, res.stderr)
        assert not out.exists()
