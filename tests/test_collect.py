"""`oirl collect` end to end with a real (tiny, random) LLM on the transformers backend.

The model is built in a temporary folder by tests/tiny_lm.py: nothing is downloaded and
no generation is faked. Covers generation, grading, shards and index, kill -9 + resume,
the log schema, bad input, `oirl grade`, and (where vLLM and a GPU exist) the vLLM backend.
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

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from oirl_fast.cli import app
from oirl_fast.collect.graders import get_grader
from oirl_fast.collect.run import CollectConfig, collect
from oirl_fast.schema import LOG_SCHEMA, read_logs

from tiny_lm import build_tiny_lm

runner = CliRunner()

QUERIES = [
    ("q1", "tom has 3 apples and eats 1 . how many apples left ?", "2"),
    ("q2", "tom has 5 apples and gives 2 . how many apples left ?", "3"),
    ("q3", "how many apples does tom have ? 4 + 4", "8"),
    ("q4", "tom has 7 apples and eats 7 . how many apples left ?", "0"),
]
PROMPTS = [("nan", " the answer is :"), ("cot", " let's think step by step"), ("sys", "think step by step")]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm") / "tiny-llama")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def inputs(tmp_path):
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"id": i, "query": q, "answer": a} for i, q, a in QUERIES])
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [
        {"id": "nan", "text": PROMPTS[0][1]}, {"id": "cot", "text": PROMPTS[1][1]},
        {"id": "sys", "text": PROMPTS[2][1], "placement": "system"},
    ])
    return queries, prompts


def cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def snapshot(folder: Path) -> dict:
    """name -> (mtime_ns, sha256) of every shard file."""
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted((folder / "shards").glob("*.parquet"))}


def keys_of(table) -> list[tuple]:
    return list(zip(table.column("query_id").to_pylist(), table.column("prompt_id").to_pylist(),
                    table.column("sample").to_pylist()))


# --------------------------------------------------------------------------- end to end


def test_collect_generates_grades_and_shards(tiny_model, inputs, tmp_path):
    queries, prompts = inputs
    out = tmp_path / "run"
    cfg = CollectConfig(model=str(tiny_model), queries=str(queries), prompts=str(prompts), out=out,
                        backend="transformers", samples=2, max_tokens=10, critique=True, shard_size=5, batch_size=4)
    summary = collect(cfg)

    n = len(QUERIES) * len(PROMPTS) * 2
    table = read_logs(out / "logs.parquet")  # validates against LOG_SCHEMA
    assert table.schema.equals(LOG_SCHEMA, check_metadata=False)
    assert table.num_rows == n == summary.requests == summary.generated
    keys = keys_of(table)
    assert sorted(keys) == sorted((q, p, s) for q, _, _ in QUERIES for p, _ in PROMPTS for s in (0, 1))
    rows = table.to_pylist()
    grade = get_grader("numeric")
    for r in rows:
        assert r["source"] == "tiny-llama" and r["dataset"] == "queries"
        assert isinstance(r["response"], str) and r["response"].strip()
        assert r["correct"] == grade(r["response"], r["gold"])  # the verdict is the grader's on the real answer
        assert r["confidence"] is None or 0.0 <= r["confidence"] <= 1.0
    # the system-placement prompt goes in as its own text, not appended to the query
    assert {r["prompt"] for r in rows if r["prompt_id"] == "sys"} == {PROMPTS[2][1]}
    # two samples of one (query, prompt) are separate draws
    by_pair = collections.defaultdict(set)
    for r in rows:
        by_pair[(r["query_id"], r["prompt_id"])].add(r["response"])
    assert any(len(v) == 2 for v in by_pair.values())

    # shards of at most 5 requests, each listed in the index with its keys
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [e["shard"] for e in index] == sorted(snapshot(out)) and len(index) == -(-n // 5)
    assert sum(e["rows"] for e in index) == n and all(e["rows"] <= 5 for e in index)
    assert sorted(tuple(k) for e in index for k in e["keys"]) == sorted(keys)
    assert summary.tokens == sum(e["tokens"] for e in index) > 0

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == str(tiny_model) and manifest["samples"] == 2 and manifest["grader"] == "numeric"
    assert manifest["prompt_ids"] == ["nan", "cot", "sys"] and manifest["sampling"]["max_tokens"] == 10

    # accuracy per prompt in the summary is the log's
    for p in summary.prompts:
        mine = [r["correct"] for r in rows if r["prompt_id"] == p.prompt_id]
        assert p.records == len(mine) == 8 and p.correct == sum(mine)
    assert json.loads((out / "summary.json").read_text())["requests"] == n


def test_collection_is_reproducible(tiny_model, inputs, tmp_path):
    queries, prompts = inputs
    logs = []
    for name in ("a", "b"):
        cfg = CollectConfig(model=str(tiny_model), queries=str(queries), prompts=str(prompts), out=tmp_path / name,
                            backend="transformers", max_tokens=6, shard_size=4, batch_size=4, limit=2)
        collect(cfg)
        logs.append(pq.read_table(tmp_path / name / "logs.parquet").column("response").to_pylist())
    assert logs[0] == logs[1]


def test_resume_in_process_adopts_orphan_shard_and_drops_torn_index_line(tiny_model, inputs, tmp_path):
    """The two states a kill can leave: a shard renamed but not indexed, and a half-written index line."""
    queries, prompts = inputs
    out = tmp_path / "run"
    cfg = CollectConfig(model=str(tiny_model), queries=str(queries), prompts=str(prompts), out=out,
                        backend="transformers", max_tokens=6, shard_size=3, batch_size=3)
    collect(cfg)
    full = read_logs(out / "logs.parquet")
    index = (out / "index.jsonl").read_text().splitlines(keepends=True)
    # keep shards 0-1 indexed; shard 2 exists but its index line is torn; shards 3+ never happened
    (out / "index.jsonl").write_text("".join(index[:2]) + index[2][:25])
    for p in sorted((out / "shards").glob("*.parquet"))[3:]:
        p.unlink()
    (out / "logs.parquet").unlink()
    (out / "shards" / ".shard-000003.parquet.x1y2.tmp").write_bytes(b"half a shard")
    before = snapshot(out)

    summary = collect(CollectConfig(**{**cfg.__dict__, "resume": True}))
    assert summary.resumed == 9 and summary.generated == full.num_rows - 9
    table = read_logs(out / "logs.parquet")
    assert sorted(keys_of(table)) == sorted(keys_of(full))
    assert all(snapshot(out)[k] == v for k, v in before.items())  # earlier shards untouched
    assert not list((out / "shards").glob(".*.tmp"))


def test_kill9_then_resume_has_every_request_exactly_once(tiny_model, inputs, tmp_path):
    queries, prompts = inputs
    out = tmp_path / "run"
    args = [sys.executable, "-m", "oirl_fast.cli", "collect", "--model", str(tiny_model), "--queries", str(queries),
            "--prompts", str(prompts), "--out", str(out), "--backend", "transformers", "--samples", "3",
            "--max-tokens", "24", "--shard-size", "2", "--batch-size", "2", "--no-progress"]
    n = len(QUERIES) * len(PROMPTS) * 3
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    index = out / "index.jsonl"
    deadline = time.monotonic() + 120
    try:
        while True:
            assert proc.poll() is None, f"collect ended before it could be killed: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "no shard finished in time"
            if index.is_file() and index.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "logs.parquet").exists()
    before = snapshot(out)
    assert 1 <= len(before) < n // 2, "the kill should land between the first and the last shard"

    res = cli(*args[3:], "--resume")
    assert res.exit_code == 0, res.output
    table = read_logs(out / "logs.parquet")
    counts = collections.Counter(keys_of(table))
    expected = {(q, p, s) for q, _, _ in QUERIES for p, _ in PROMPTS for s in range(3)}
    assert set(counts) == expected and set(counts.values()) == {1}
    after = snapshot(out)
    assert all(after[name] == before[name] for name in before)  # shards from before the kill were not rewritten
    assert f"{n} requests (" in res.stderr


def test_cli_collect_bundled_queries_and_published_prompts(tiny_model, tmp_path, cache_dir):
    out = tmp_path / "run"
    res = cli("collect", "--model", tiny_model, "--queries", "svamp", "--split", "test", "--limit", "2",
              "--prompts", "published", "--out", out, "--backend", "transformers", "--max-tokens", "4",
              "--no-chat-template", "--temperature", "0", "--no-progress")
    assert res.exit_code == 0, res.output
    table = read_logs(out / "logs.parquet")
    assert table.num_rows == 2 * 16
    assert set(table.column("dataset").to_pylist()) == {"svamp"} and set(table.column("split").to_pylist()) == {"test"}
    assert set(table.column("sample").to_pylist()) == {0}
    assert "accuracy per prompt" in res.stderr and "req" in res.stderr
    # downstream commands read a collected log as they read an imported one
    res = cli("embed", out / "logs.parquet", "--cache-dir", cache_dir)
    assert res.exit_code == 0 and "18 distinct texts" in res.stderr, res.output


# --------------------------------------------------------------------------- bad input


def test_query_without_gold_answer(tiny_model, inputs, tmp_path):
    _, prompts = inputs
    bad = write_jsonl(tmp_path / "q.jsonl", [{"id": "a", "query": "how many ?", "answer": "1"},
                                             {"id": "b", "query": "how many ?"}])
    res = cli("collect", "--model", tiny_model, "--queries", bad, "--prompts", prompts, "--out", tmp_path / "o",
              "--backend", "transformers")
    assert res.exit_code == 2 and f"{bad}:2" in res.stderr and "gold answer" in res.stderr
    assert "Traceback" not in res.output and not (tmp_path / "o").exists()


def test_gold_the_grader_cannot_read(tiny_model, inputs, tmp_path):
    _, prompts = inputs
    bad = write_jsonl(tmp_path / "q.jsonl", [{"id": "a", "query": "how many ?", "answer": "many"}])
    res = cli("collect", "--model", tiny_model, "--queries", bad, "--prompts", prompts, "--out", tmp_path / "o",
              "--backend", "transformers")
    assert res.exit_code == 2 and f"{bad}:1" in res.stderr and "no number" in res.stderr


def test_duplicate_prompt_ids(tiny_model, inputs, tmp_path):
    queries, _ = inputs
    bad = write_jsonl(tmp_path / "p.jsonl", [{"id": "x", "text": "a"}, {"id": "y", "text": "b"}, {"id": "x", "text": "c"}])
    res = cli("collect", "--model", tiny_model, "--queries", queries, "--prompts", bad, "--out", tmp_path / "o",
              "--backend", "transformers")
    assert res.exit_code == 2 and f"{bad}:3" in res.stderr and "duplicate prompt id 'x'" in res.stderr
    assert not (tmp_path / "o").exists()


def test_model_path_that_does_not_exist(inputs, tmp_path):
    queries, prompts = inputs
    res = cli("collect", "--model", tmp_path / "no-such-model", "--queries", queries, "--prompts", prompts,
              "--out", tmp_path / "o", "--backend", "transformers")
    assert res.exit_code == 2 and "model path does not exist" in res.stderr and "no-such-model" in res.stderr
    assert not (tmp_path / "o").exists()


def test_out_folder_of_another_collection_is_refused(tiny_model, inputs, tmp_path):
    queries, prompts = inputs
    out = tmp_path / "run"
    base = ["collect", "--model", tiny_model, "--queries", queries, "--out", out, "--backend", "transformers",
            "--max-tokens", "4", "--shard-size", "4", "--no-progress"]
    assert cli(*base, "--prompts", prompts).exit_code == 0
    before = snapshot(out)
    logs_before = (out / "logs.parquet").read_bytes()

    other_prompts = write_jsonl(tmp_path / "other.jsonl", [{"id": "nan", "text": "a different prompt"}])
    other_model = build_tiny_lm(tmp_path / "other-model", seed=1)
    attempts = {
        "same command without --resume": [*base, "--prompts", prompts],
        "another prompt set": [*base, "--prompts", other_prompts, "--resume"],
        "another model": [*[other_model if a == tiny_model else a for a in base], "--prompts", prompts, "--resume"],
        "another grader": [*base, "--prompts", prompts, "--grader", "gsm8k", "--resume"],
    }
    for what, args in attempts.items():
        res = cli(*args)
        assert res.exit_code == 2, what
        assert str(out) in res.stderr and len(res.stderr.strip().splitlines()) == 1, what
        assert snapshot(out) == before and (out / "logs.parquet").read_bytes() == logs_before, what
    assert "prompt_set_sha256" in cli(*attempts["another prompt set"]).stderr
    assert "--resume" in cli(*attempts["same command without --resume"]).stderr

    # a matching --resume is accepted and generates nothing new
    res = cli(*base, "--prompts", prompts, "--resume")
    assert res.exit_code == 0 and "0 generated now" in res.stderr and snapshot(out) == before


def test_out_folder_holding_other_files_is_refused(tiny_model, inputs, tmp_path):
    queries, prompts = inputs
    out = tmp_path / "busy"
    out.mkdir()
    (out / "logs.parquet").write_bytes(b"someone else's")
    res = cli("collect", "--model", tiny_model, "--queries", queries, "--prompts", prompts, "--out", out,
              "--backend", "transformers", "--resume")
    assert res.exit_code == 2 and "no collection manifest" in res.stderr
    assert (out / "logs.parquet").read_bytes() == b"someone else's"


def test_vllm_missing_says_how_to_install(tiny_model, inputs, tmp_path):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    queries, prompts = inputs
    res = cli("collect", "--model", tiny_model, "--queries", queries, "--prompts", prompts, "--out", tmp_path / "o",
              "--backend", "vllm")
    assert res.exit_code == 2 and "pip install 'oirl-fast[collect]'" in res.stderr
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- oirl grade


def test_grade_regrades_collected_log(tiny_model, inputs, tmp_path):
    queries, prompts = inputs
    out = tmp_path / "run"
    collect(CollectConfig(model=str(tiny_model), queries=str(queries), prompts=str(prompts), out=out,
                          backend="transformers", max_tokens=6, shard_size=12, batch_size=6))
    regraded = tmp_path / "regraded.jsonl"
    res = cli("grade", "--in", out / "logs.parquet", "--grader", "numeric", "--out", regraded, "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["graded"] == summary["agree"] == 12 and summary["agreement"] == 1.0
    assert read_logs(regraded).column("correct").to_pylist() == read_logs(out / "logs.parquet").column("correct").to_pylist()


def test_grade_published_answers_bundled():
    from oirl_fast.collect.published import bundled_source

    folder = bundled_source() / "prompt_oirl_llama2" / "answers" / "gsm8k"
    res = cli("grade", "--in", folder, "--grader", "numeric", "--json")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["records"] == s["graded"] == 16000
    assert s["agree"] == 15796  # 98.7%: the README explains the 204 disagreements
    assert (s["old_true_new_false"], s["old_false_new_true"]) == (54, 150)
    legacy = json.loads(cli("grade", "--in", folder, "--grader", "prompt-oirl", "--json").stdout)
    assert legacy["agree"] == 16000  # the published grader, reproduced


def test_grade_bad_input(tmp_path):
    res = cli("grade", "--in", tmp_path / "nope.parquet")
    assert res.exit_code == 2 and "nope.parquet" in res.stderr
    res = cli("grade", "--in", tmp_path, "--grader", "numeric")
    assert res.exit_code == 2 and "no published answer files" in res.stderr
    res = cli("grade", "--in", tmp_path, "--grader", "fuzzy")
    assert res.exit_code == 2 and "unknown grader 'fuzzy'" in res.stderr


# --------------------------------------------------------------------------- vLLM


def test_vllm_engine_options_reach_the_engine(monkeypatch, tmp_path):
    """The options oirl collect takes reach vllm.LLM (a stand-in here) as keywords; those left at their
    defaults that vLLM treats as unset (quantization, context length) are not passed at all."""
    import types

    from oirl_fast.collect.run import backend_for

    made = []

    class FakeLLM:
        def __init__(self, **kwargs):
            made.append(kwargs)

        def get_tokenizer(self):
            return "tokenizer"

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM, SamplingParams=dict))
    cfg = CollectConfig("org/model", "gsm8k", "published", tmp_path, seed=7, tensor_parallel_size=2, dtype="float16",
                        quantization="awq", max_model_len=4096, batch_size=3, device="cuda")
    backend = backend_for(cfg)
    assert backend.name == "vllm" and backend.tokenizer == "tokenizer" and backend.lora_request is None
    assert made[-1] == {"model": "org/model", "tensor_parallel_size": 2, "dtype": "float16", "seed": 7,
                        "gpu_memory_utilization": 0.9, "trust_remote_code": False, "quantization": "awq",
                        "max_model_len": 4096}
    backend_for(CollectConfig("org/model", "gsm8k", "published", tmp_path))
    assert made[-1] == {"model": "org/model", "tensor_parallel_size": 1, "dtype": "auto", "seed": 0,
                        "gpu_memory_utilization": 0.9, "trust_remote_code": False}


def _vllm_reason() -> str | None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "vllm is not installed (pip install 'oirl-fast[collect]')"
    import torch

    if not torch.cuda.is_available():
        return "vLLM needs a CUDA GPU and none is available"
    return None


@pytest.mark.skipif(_vllm_reason() is not None, reason=str(_vllm_reason()))
def test_vllm_backend_end_to_end(inputs, tmp_path):
    queries, prompts = inputs
    model = build_tiny_lm(tmp_path / "tiny-vllm", hidden=128, heads=2)  # head size 64 for vLLM's kernels
    out = tmp_path / "run"
    cfg = CollectConfig(model=str(model), queries=str(queries), prompts=str(prompts), out=out, backend="vllm",
                        samples=2, max_tokens=8, critique=True, shard_size=10)
    summary = collect(cfg)
    table = read_logs(out / "logs.parquet")
    assert table.num_rows == summary.requests == len(QUERIES) * len(PROMPTS) * 2
    assert len(set(keys_of(table))) == table.num_rows
    assert all(isinstance(r, str) for r in table.column("response").to_pylist())
    assert summary.tokens > 0
