"""Issue 18, "trust nothing on disk": one writer per output, checked caches, no answer to an empty
question, and one line (never a traceback or a hang) for what a user can get wrong."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import oirl_fast as oirl
from oirl_fast.errors import OirlError


def _run(*args, cache_dir=None):
    from oirl_fast.cli import app

    env = {"OIRL_CACHE_DIR": str(cache_dir)} if cache_dir is not None else {}
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, mawps_small, static_cache):
    """A small static-embedder model (no compiled library), trained once for this module."""
    out = tmp_path_factory.mktemp("trust") / "model"
    oirl.fit(mawps_small, out, n_estimators=20, compile=False, cache_dir=static_cache, progress=False)
    return out


@pytest.fixture()
def queries(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"id": i, "query": f"Tom has {i} apples and buys {i + 3} more. How many?"})
                            + "\n" for i in range(30)))
    return path


def _hold_lock(target: Path) -> subprocess.Popen:
    """Another process holding the output lock of ``target`` until it is killed."""
    code = ("import sys, time; from oirl_fast.locks import output_lock\n"
            "with output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


# --------------------------------------------------------------------------------------
# 1. One writer per output


def test_a_second_score_on_the_same_output_is_refused_naming_the_running_job(model_dir, queries, tmp_path,
                                                                              static_cache):
    out = tmp_path / "picks.jsonl"
    holder = _hold_lock(out)
    try:
        res = _run("score", model_dir, "--in", queries, "--out", out, cache_dir=static_cache)
        assert res.exit_code == 2, res.output
        assert f"pid {holder.pid}" in res.output and "another oirl job is writing here" in res.output
        assert "Traceback" not in res.output
        assert not out.exists() and not Path(f"{out}.partial").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up: its lock is recovered, and removed after the run
    assert Path(f"{out}.lock").exists()
    res = _run("score", model_dir, "--in", queries, "--out", out, cache_dir=static_cache)
    assert res.exit_code == 0, res.output
    assert len(out.read_text().splitlines()) == 30
    assert not Path(f"{out}.lock").exists()


def test_a_stale_lock_file_of_a_dead_process_is_recovered(model_dir, queries, tmp_path, static_cache):
    out = tmp_path / "picks.jsonl"
    Path(f"{out}.lock").write_text(json.dumps({"pid": 999_999_999, "host": "gone"}))
    from oirl_fast.scoring.stream import score_file

    score_file(model_dir, queries, out, cache_dir=str(static_cache), progress=False)
    assert len(out.read_text().splitlines()) == 30 and not Path(f"{out}.lock").exists()


def test_train_collect_and_dask_outputs_take_the_lock_too(tmp_path, mawps_small):
    from oirl_fast.collect.run import CollectConfig, collect
    from oirl_fast.scoring.dask import score_distributed

    model_out, coll_out, parts_out = tmp_path / "model", tmp_path / "coll", tmp_path / "parts"
    holders = [_hold_lock(p) for p in (model_out, coll_out, parts_out)]
    try:
        with pytest.raises(OirlError, match=f"pid {holders[0].pid}"):
            oirl.fit(mawps_small, model_out, n_estimators=2, compile=False, progress=False)
        with pytest.raises(OirlError, match=f"pid {holders[1].pid}"):
            collect(CollectConfig(model="none", queries="gsm8k", prompts="published", out=coll_out))
        with pytest.raises(OirlError, match=f"pid {holders[2].pid}"):
            score_distributed(tmp_path / "m", tmp_path / "q.jsonl", parts_out)
    finally:
        for h in holders:
            h.kill()
            h.wait()
    assert not model_out.exists() and not coll_out.exists()


# --------------------------------------------------------------------------------------
# 3. No confident answer to an empty question

NO_QUESTION = ["\u200b", "\u00ad", "\ufeff", "\U0001F600", "\u0000", "\u200b\u00ad \ufeff"]


def test_a_query_without_tokens_is_an_error_record_on_the_cli(model_dir, tmp_path, static_cache):
    inp = tmp_path / "q.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "query": q}) + "\n" for i, q in enumerate(["How many apples?"]
                                                                                            + NO_QUESTION)))
    res = _run("score", model_dir, "--in", inp, "--out", tmp_path / "o.jsonl", cache_dir=static_cache)
    assert res.exit_code == 0, res.output
    recs = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert "prompt_id" in recs[0]
    for rec in recs[1:]:
        assert "prompt_id" not in rec and rec["error"].startswith('"query" '), rec


def test_a_query_without_tokens_is_an_oirlerror_from_the_api(model_dir, static_cache):
    model = oirl.load(model_dir, cache_dir=static_cache)
    assert model.pick(["How many apples?"]).ids.shape == (1, 1)
    for q in NO_QUESTION:
        with pytest.raises(OirlError, match="no question to pick a prompt for"):
            model.pick(["How many apples?", q])


def test_model_pick_adds_no_cache_shard_per_call(model_dir, tmp_path, static_cache):
    import shutil

    shutil.copytree(static_cache / "encoders", tmp_path / "cache" / "encoders")  # no second static build
    model = oirl.load(model_dir, cache_dir=tmp_path / "cache")
    shards = lambda: sorted((tmp_path / "cache").rglob("shard-*.npz"))  # noqa: E731
    for i in range(5):
        model.pick([f"Question number {i}: what is {i} plus {i}?"])
    assert shards() == []


def test_top_k_above_the_prompt_count_is_refused_by_cli_and_api(model_dir, queries, tmp_path, static_cache):
    model = oirl.load(model_dir, cache_dir=static_cache)
    k = model.n_prompts + 1
    with pytest.raises(OirlError, match="top_k"):
        model.pick(["How many apples?"], top_k=k)
    res = _run("score", model_dir, "--in", queries, "--out", tmp_path / "o.jsonl", "--top-k", k,
               cache_dir=static_cache)
    assert res.exit_code == 2 and f"--top-k {k} is more than the {k - 1} candidate prompts" in res.output
    assert not (tmp_path / "o.jsonl").exists()
