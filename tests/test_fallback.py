"""The abstention rule a model carries (metadata.fallback): written by `oirl train --fallback-margin`, applied by
`oirl score` and `Model.pick`. A model without signal falls back everywhere; one with signal switches where it predicts a gain."""
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

import oirl_fast as oirl
from oirl_fast.cli import app
from oirl_fast.reranking.fallback import apply_fallback, parse_margin, resolve
from oirl_fast.schema import write_logs

runner = CliRunner()


def test_apply_fallback_moves_the_fixed_prompt_first_unless_the_gain_clears_the_margin():
    idx = np.array([[2, 0, 1], [1, 2, 0], [0, 1, 2]])
    sc = np.array([[0.9, 0.5, 0.1], [0.6, 0.55, 0.2], [0.7, 0.6, 0.5]])
    fb_scores = np.array([0.5, 0.2, 0.7])  # prompt 0's score per row
    # rows 0 and 1 predict a gain of 0.4 over prompt 0; row 2 picks prompt 0 already
    new_idx, _ = apply_fallback(idx, sc, fb_scores, col=0, margin=0.3)
    assert new_idx.tolist() == idx.tolist()
    new_idx, new_sc = apply_fallback(idx, sc, fb_scores, col=0, margin=0.45)
    assert new_idx.tolist() == [[0, 2, 1], [0, 1, 2], [0, 1, 2]]
    assert new_sc[0].tolist() == [0.5, 0.9, 0.1] and new_sc[1].tolist() == [0.2, 0.6, 0.55]
    same_idx, _ = apply_fallback(idx, sc, fb_scores, col=0, margin=float("inf"))
    assert (same_idx[:, 0] == 0).all()


def test_resolve_needs_the_prompt_with_the_models_text():
    prompts = [{"id": "a", "text": "A"}, {"id": "b", "text": "B"}]
    assert resolve({"prompt_id": "b", "margin": 0.1}, ["a", "b"], ["A", "B"], prompts) == (1, 0.1)
    assert resolve({"prompt_id": "b", "margin": None}, ["a", "b"], ["A", "B"], prompts) == (1, float("inf"))
    assert resolve({"prompt_id": "b", "margin": 0.1}, ["a", "b"], ["A", "other"], prompts) is None
    assert resolve(None, ["a"], ["A"], prompts) is None


@pytest.mark.parametrize("bad", ["-1", "nan", "inf", "sometimes"])
def test_bad_margin_exit_2(bad, tmp_path):
    res = runner.invoke(app, ["train", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "m"),
                              "--fallback-margin", bad])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_parse_margin():
    assert parse_margin("auto") == "auto" and parse_margin("0.05") == 0.05 and parse_margin(None) is None


@pytest.fixture(scope="module")
def logs(tmp_path_factory, mawps_small, static_cache):
    """Two logs on the same 300 MAWPS questions and prompts, with made-up outcomes.

    signal: prompt CoT is right exactly when the question's first static-embedding coordinate is above its
    median, APE exactly when it is not, the others at random; no_signal: every outcome at random."""
    from oirl_fast.embed import Embedder
    from oirl_fast.encoders import make_encoder

    emb = Embedder(cache_dir=static_cache, progress=False, encoder=make_encoder("static", static_cache, "cpu"))
    queries = mawps_small.column("query").to_pylist()
    uq = sorted(set(queries))
    first = dict(zip(uq, emb.embed(uq)[:, 0]))
    med = np.median(list(first.values()))
    high = np.array([first[q] > med for q in queries])
    pid = np.asarray(mawps_small.column("prompt_id").to_pylist(), dtype=object)
    rng = np.random.default_rng(0)
    coin = rng.random(len(pid)) < 0.5
    signal = np.where(pid == "CoT", high, np.where(pid == "APE", ~high, coin))
    out = {}
    i = mawps_small.schema.get_field_index("correct")
    folder = tmp_path_factory.mktemp("fallback-logs")
    for name, correct in (("signal", signal), ("no_signal", rng.random(len(pid)) < 0.5)):
        table = mawps_small.set_column(i, mawps_small.schema.field(i), pa.array(correct, pa.bool_()))
        write_logs(table, folder / f"{name}.parquet")
        out[name] = folder / f"{name}.parquet"
    queries_file = folder / "queries.jsonl"
    test = mawps_small.filter(pc.equal(mawps_small.column("split"), "test"))
    qs = sorted(set(test.column("query").to_pylist()))[:200]
    queries_file.write_text("".join(json.dumps({"id": str(k), "query": q}) + "\n" for k, q in enumerate(qs)))
    return out, queries_file


def _train_and_score(log, queries, tmp_path, cache):
    model = tmp_path / "model"
    res = runner.invoke(app, ["train", str(log), "--out", str(model), "--no-compile", "--n-estimators", "80",
                              "--fallback-margin", "auto", "--cache-dir", str(cache)])
    assert res.exit_code == 0, res.output
    fb = json.loads((model / "metadata.json").read_text())["fallback"]
    res = runner.invoke(app, ["score", str(model), "--in", str(queries), "--out", str(tmp_path / "picks.jsonl"),
                              "--scores", "--top-k", "2", "--cache-dir", str(cache)])
    assert res.exit_code == 0, res.output
    picks = [json.loads(x) for x in (tmp_path / "picks.jsonl").read_text().splitlines()]
    # the Python API applies the same rule: Model.pick agrees with oirl score query by query
    texts = [json.loads(x)["query"] for x in Path(queries).read_text().splitlines()]
    api_picks = oirl.load(model, cache_dir=cache).pick(texts, top_k=2)
    assert list(api_picks.ids[:, 0]) == [p["prompt_id"] for p in picks]
    return fb, picks


def test_no_signal_falls_back_everywhere(logs, tmp_path, static_cache):
    (paths, queries) = logs
    fb, picks = _train_and_score(paths["no_signal"], queries, tmp_path, static_cache)
    assert fb["margin"] is None  # the inner folds found no switch that pays
    assert len(picks) == 200
    assert all(p["prompt_id"] == fb["prompt_id"] for p in picks)
    assert all(p["top_k"][0]["prompt_id"] == fb["prompt_id"] for p in picks)
    # and the model alone would have picked something else on some queries
    assert any(max(p["scores"], key=p["scores"].get) != fb["prompt_id"] for p in picks)


def test_signal_switches_where_the_gain_clears_the_margin(logs, tmp_path, static_cache):
    (paths, queries) = logs
    fb, picks = _train_and_score(paths["signal"], queries, tmp_path, static_cache)
    assert fb["margin"] is not None and fb["inner_gain"] > 0
    switched = 0
    for p in picks:
        s = p["scores"]
        top = max(s, key=s.get)
        expected = top if s[top] - s[fb["prompt_id"]] > fb["margin"] else fb["prompt_id"]
        assert p["prompt_id"] == expected
        assert p["score"] == pytest.approx(s[expected])
        switched += expected != fb["prompt_id"]
    assert switched > 0.2 * len(picks)
    assert {p["prompt_id"] for p in picks} >= {"CoT", "APE"}
