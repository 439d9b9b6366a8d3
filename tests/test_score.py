"""`oirl score`: streaming best-of-N picks, error records, --strict, --resume, fallbacks, bad input."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import typer
from typer.testing import CliRunner

from oirl_fast.scoring import job as score_mod
from oirl_fast.errors import OirlError
from oirl_fast.features import FeatureLayout, grid_features
from oirl_fast.scoring.stream import score_file
from oirl_fast.train import artifact as art
from oirl_fast.train.reward_model import RewardModel, TrainConfig

D = 384


@pytest.fixture(scope="module")
def texts(real_pairs, embedder):
    """The real pairs' query and prompt texts (their embeddings are already in the session cache)."""
    from oirl_fast.collect.published import import_published

    log = import_published("gsm8k")
    rows = log.filter(pc.equal(log.column("split"), "test"))
    ids = sorted(set(rows.column("query_id").to_pylist()))
    chosen = np.random.default_rng(1).choice(ids, size=200, replace=False)
    rows = rows.filter(pc.is_in(rows.column("query_id"), pa.array(chosen)))
    queries = sorted(set(zip(rows.column("query_id").to_pylist(), rows.column("query").to_pylist())))
    prompts = sorted(set(zip(rows.column("prompt_id").to_pylist(), rows.column("prompt").to_pylist())))
    q_emb = embedder.embed([q for _, q in queries])
    p_emb = embedder.embed([p for _, p in prompts])
    return queries, prompts, q_emb, p_emb


def _save(tmp_path_factory, name, real_pairs, texts, compile_library=False, **cfg):
    X, y = real_pairs
    _, prompts, _, p_emb = texts
    config = TrainConfig(early_stopping_rounds=1000, **cfg)
    model = RewardModel(config).fit(X, y)
    meta = art.ModelMetadata(
        dataset="gsm8k", backend=config.backend, embedding_model="sentence-transformers/all-MiniLM-L6-v2",
        feature_layout=FeatureLayout(D, D).to_dict(),
        prompts=[{"id": pid, "text": t, "seen_in_training": True} for pid, t in prompts],
        prompt_embeddings_sha256=art.embeddings_hash(p_emb), protocol={"name": "test"},
        train_config=config.to_dict(), best_iteration=model.best_iteration, n_train_examples=len(y),
    )
    out = tmp_path_factory.mktemp("models") / name
    art.save_artifact(out, model, meta, p_emb, compile_library=compile_library)
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, real_pairs, texts):
    return _save(tmp_path_factory, "lgb", real_pairs, texts, n_estimators=40)


@pytest.fixture(scope="module")
def xgb_dir(tmp_path_factory, real_pairs, texts):
    return _save(tmp_path_factory, "xgb", real_pairs, texts, backend="xgboost", n_estimators=30)


@pytest.fixture()
def factory(embedder):
    return lambda cached: embedder


def _native_grid(model_dir, q_emb, p_emb):
    a = art.load_artifact(model_dir)
    return a.model.predict(grid_features(q_emb, p_emb)).reshape(len(q_emb), len(p_emb))


def _write_queries(path, queries, bad=True):
    lines = []
    for i, (qid, q) in enumerate(queries):
        lines.append(json.dumps({"id": qid, "query": q, "tag": i, "meta": {"k": [1, 2]}}))
    if bad:
        lines.insert(3, '{"id": "broken", "query": ')  # malformed JSON
        lines.insert(7, json.dumps({"id": "noq", "text": "no query field"}))
        lines.insert(9, "")
        lines.insert(12, "[1, 2, 3]")
        lines.insert(15, json.dumps({"id": "num", "query": 42}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines


def _read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_picks_match_native_and_every_line_is_accounted_for(model_dir, texts, factory, tmp_path):
    queries, prompts, q_emb, p_emb = texts
    inp, out = tmp_path / "q.jsonl", tmp_path / "picks.jsonl"
    lines = _write_queries(inp, queries[:40])
    summary = score_file(model_dir, inp, out, progress=False, embedder_factory=factory, chunk_size=16)
    recs = _read(out)
    assert len(recs) == len(lines) == 45
    assert [r["line"] for r in recs] == list(range(1, 46))
    errors = {r["line"]: r for r in recs if "error" in r}
    assert sorted(errors) == [4, 8, 10, 13, 16]
    assert "malformed JSON" in errors[4]["error"]
    assert errors[8]["id"] == "noq" and "missing \"query\"" in errors[8]["error"]
    assert errors[10]["error"] == "empty line"
    assert "JSON object" in errors[13]["error"]
    assert "string" in errors[16]["error"]
    assert summary.scored == 40 and summary.errors == 5 and summary.lines == 45
    assert summary.route == "kernel (numba CPU)" and summary.pairs == 40 * 16
    native = _native_grid(model_dir, q_emb[:40], p_emb)
    good = [r for r in recs if "error" not in r]
    assert [r["id"] for r in good] == [qid for qid, _ in queries[:40]]
    assert [r["tag"] for r in good] == list(range(40)) and good[0]["meta"] == {"k": [1, 2]}
    assert "query" not in good[0]
    pids = [pid for pid, _ in prompts]
    picks = [pids.index(r["prompt_id"]) for r in good]
    assert picks == native.argmax(axis=1).tolist()
    np.testing.assert_allclose([r["score"] for r in good], native.max(axis=1), atol=1e-9)
    assert good[0]["prompt"] == dict(prompts)[good[0]["prompt_id"]]


def test_top_k_and_all_scores(xgb_dir, texts, factory, tmp_path):
    queries, prompts, q_emb, p_emb = texts
    inp, out = tmp_path / "q.jsonl", tmp_path / "picks.jsonl"
    _write_queries(inp, queries[:20], bad=False)
    score_file(xgb_dir, inp, out, top_k=3, with_scores=True, progress=False, embedder_factory=factory)
    recs = _read(out)
    native = _native_grid(xgb_dir, q_emb[:20], p_emb)
    pids = [pid for pid, _ in prompts]
    for r, row in zip(recs, native):
        assert len(r["top_k"]) == 3 and r["top_k"][0]["prompt_id"] == r["prompt_id"]
        assert [t["score"] for t in r["top_k"]] == sorted([t["score"] for t in r["top_k"]], reverse=True)
        assert list(r["scores"]) == pids
        np.testing.assert_allclose([r["scores"][p] for p in pids], row, atol=1e-6)
        assert row[pids.index(r["prompt_id"])] >= row.max() - 1e-6


def test_strict_stops_before_writing(model_dir, texts, factory, tmp_path):
    queries = texts[0]
    inp, out = tmp_path / "q.jsonl", tmp_path / "picks.jsonl"
    _write_queries(inp, queries[:10])
    with pytest.raises(OirlError) as exc:
        score_file(model_dir, inp, out, strict=True, progress=False, embedder_factory=factory)
    assert exc.value.line == 4 and exc.value.path == str(inp) and "JSON" in exc.value.message
    assert not out.exists()


def test_resume_after_interrupt_gives_the_same_output(model_dir, texts, factory, tmp_path, monkeypatch):
    queries = texts[0]
    inp = tmp_path / "q.jsonl"
    _write_queries(inp, queries[:60])
    full, part = tmp_path / "full.jsonl", tmp_path / "part.jsonl"
    score_file(model_dir, inp, full, progress=False, embedder_factory=factory, chunk_size=8)
    part.write_text("an earlier complete output\n")

    real = score_mod.Scoring.score_chunk
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(score_mod.Scoring, "score_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        score_file(model_dir, inp, part, progress=False, embedder_factory=factory, chunk_size=8)
    monkeypatch.setattr(score_mod.Scoring, "score_chunk", real)
    partial = tmp_path / "part.jsonl.partial"
    assert part.read_text() == "an earlier complete output\n"  # the complete output survives the interrupted run
    assert len(_read(partial)) == 24  # three chunks made it
    # a crash in the middle of a write leaves a partial line: resume cuts it
    with partial.open("a", encoding="utf-8") as fh:
        fh.write('{"line": 25, "id": "q-half')
    s = score_file(model_dir, inp, part, resume=True, progress=False, embedder_factory=factory, chunk_size=8)
    assert s.resumed == 24 and s.lines == 65
    assert part.read_text() == full.read_text()
    assert not partial.exists() and not (tmp_path / "part.jsonl.partial.job.json").exists()
    # a finished output of the same job: nothing to do (issue 18), the output left as it is
    before = part.stat().st_mtime_ns
    s = score_file(model_dir, inp, part, resume=True, progress=False, embedder_factory=factory)
    assert s.resumed == 65 and s.lines == 65 and s.scored == 0 and part.read_text() == full.read_text()
    assert part.stat().st_mtime_ns == before
    # a .partial that is not ours is refused, with or without --resume, and left alone
    other = tmp_path / "other.jsonl"
    (tmp_path / "other.jsonl.partial").write_text('{"something": 1}\n')
    for resume in (True, False):
        with pytest.raises(OirlError, match="not ours"):
            score_file(model_dir, inp, other, resume=resume, progress=False, embedder_factory=factory)
    assert (tmp_path / "other.jsonl.partial").read_text() == '{"something": 1}\n'


def test_precomputed_embeddings_with_nan_row(model_dir, texts, tmp_path):
    queries, prompts, q_emb, p_emb = texts
    emb = q_emb[:30].copy()
    emb[5, 0] = np.nan
    np.save(tmp_path / "q.npy", emb)
    (tmp_path / "ids.txt").write_text("\n".join(qid for qid, _ in queries[:30]) + "\n")
    out = tmp_path / "picks.jsonl"
    s = score_file(model_dir, None, out, embeddings=tmp_path / "q.npy", ids=tmp_path / "ids.txt", progress=False)
    recs = _read(out)
    assert len(recs) == 30 and s.errors == 1 and "NaN" in recs[5]["error"] and recs[5]["line"] == 6
    native = _native_grid(model_dir, q_emb[:30], p_emb)
    pids = [pid for pid, _ in prompts]
    ok = [i for i in range(30) if i != 5]
    assert [pids.index(recs[i]["prompt_id"]) for i in ok] == native.argmax(axis=1)[ok].tolist()
    with pytest.raises(OirlError, match="NaN") as exc:
        score_file(model_dir, None, tmp_path / "strict.jsonl", embeddings=tmp_path / "q.npy",
                   ids=tmp_path / "ids.txt", strict=True, progress=False)
    assert exc.value.line == 6 and not (tmp_path / "strict.jsonl").exists()
    (tmp_path / "short.txt").write_text("a\nb\n")
    with pytest.raises(OirlError, match="2 ids but 30 embedding rows"):
        score_file(model_dir, None, out, embeddings=tmp_path / "q.npy", ids=tmp_path / "short.txt", progress=False)


def test_custom_prompts_file(model_dir, texts, factory, tmp_path):
    queries, prompts, q_emb, p_emb = texts
    pf = tmp_path / "prompts.jsonl"
    chosen = [prompts[i] for i in (3, 0, 7)]
    pf.write_text("".join(json.dumps({"id": f"x-{pid}", "text": t}) + "\n" for pid, t in chosen))
    inp, out = tmp_path / "q.jsonl", tmp_path / "picks.jsonl"
    _write_queries(inp, queries[:12], bad=False)
    score_file(model_dir, inp, out, prompts=pf, progress=False, embedder_factory=factory)
    native = _native_grid(model_dir, q_emb[:12], p_emb[[3, 0, 7]])
    got = [["x-" + chosen[j][0] for j in range(3)].index(r["prompt_id"]) for r in _read(out)]
    assert got == native.argmax(axis=1).tolist()
    # a prompts file embedded with another model: error names file and line
    pf.write_text(json.dumps({"id": "a", "text": "t"}) + "\n"
                  + json.dumps({"id": "b", "text": "u", "embedding_model": "other/model"}) + "\n")
    with pytest.raises(OirlError) as exc:
        score_file(model_dir, inp, out, prompts=pf, progress=False, embedder_factory=factory)
    assert exc.value.line == 2 and exc.value.path == str(pf) and "other/model" in exc.value.message
    pf.write_text('{"id": "a", "text": "t"}\n{"id": "b" "text"}\n')
    with pytest.raises(OirlError) as exc:
        score_file(model_dir, inp, out, prompts=pf, progress=False, embedder_factory=factory)
    assert exc.value.line == 2


def test_fallback_for_big_trees(tmp_path_factory, real_pairs, texts, factory, tmp_path):
    """Trees over 64 leaves: the kernel refuses, native predict scores, the summary says so."""
    queries, prompts, q_emb, p_emb = texts
    big = _save(tmp_path_factory, "big", real_pairs, texts, n_estimators=3, num_leaves=100, min_child_weight=2)
    inp, out = tmp_path / "q.jsonl", tmp_path / "picks.jsonl"
    _write_queries(inp, queries[:15], bad=False)
    s = score_file(big, inp, out, progress=False, embedder_factory=factory)
    assert s.route == "native predict" and "leaves" in s.fallback_reason
    native = _native_grid(big, q_emb[:15], p_emb)
    pids = [pid for pid, _ in prompts]
    assert [pids.index(r["prompt_id"]) for r in _read(out)] == native.argmax(axis=1).tolist()
    with pytest.raises(OirlError, match="kernel cannot score"):
        score_file(big, inp, out, route="kernel", progress=False, embedder_factory=factory)


@pytest.fixture(scope="module")
def compiled_dir(tmp_path_factory, real_pairs, texts):
    pytest.importorskip("tl2cgen")
    return _save(tmp_path_factory, "compiled", real_pairs, texts, compile_library=True, n_estimators=3)


def test_compiled_library_route(compiled_dir, texts, factory, tmp_path):
    queries, prompts, q_emb, p_emb = texts
    inp, out = tmp_path / "q.jsonl", tmp_path / "picks.jsonl"
    _write_queries(inp, queries[:10], bad=False)
    s = score_file(compiled_dir, inp, out, route="compiled", progress=False, embedder_factory=factory)
    assert s.route == "compiled library (tl2cgen)"
    native = _native_grid(compiled_dir, q_emb[:10], p_emb)
    np.testing.assert_allclose([r["score"] for r in _read(out)], native.max(axis=1), atol=1e-9)


@pytest.mark.parametrize("which", ["lightgbm", "xgboost"])
def test_scorer_routes_agree(which, compiled_dir, xgb_dir, texts):
    """kernel, compiled library and native predict: the same picks in the same order, scores within float
    rounding, in the contract's shapes and dtypes."""
    from oirl_fast.scoring.candidates import model_candidates
    from oirl_fast.scoring.scorer import Scorer

    queries, prompts, q_emb, p_emb = texts
    artifact = art.load_artifact(compiled_dir if which == "lightgbm" else xgb_dir)
    routes = ["kernel", "compiled", "native"] if artifact.compiled_library else ["kernel", "native"]
    Q = q_emb[:60]
    scorers = {r: Scorer.for_artifact(artifact, route=r, device="cpu") for r in routes}
    assert Scorer.for_artifact(artifact, device="cpu").route == "kernel"  # auto: the fastest
    P = len(model_candidates(artifact))
    ref_idx, ref_sc = scorers["native"].top(Q, 3)
    ref_full = scorers["native"].scores(Q)
    for route, scorer in scorers.items():
        assert scorer.route == route and scorer.candidates.ids == [pid for pid, _ in prompts]
        full = scorer.scores(Q)
        idx, sc = scorer.top(Q, 3)
        assert full.shape == (60, P) and full.dtype == np.float32
        assert idx.shape == sc.shape == (60, 3) and idx.dtype == np.int64 and sc.dtype == np.float32
        np.testing.assert_allclose(full, ref_full, atol=1e-6)
        np.testing.assert_allclose(sc, ref_sc, atol=1e-6)
        np.testing.assert_array_equal(idx[:, 0], ref_idx[:, 0])
        assert (np.diff(sc, axis=1) <= 0).all()  # best first
    with pytest.raises(OirlError, match="query embeddings must have shape"):
        scorers["native"].scores(Q[:, :10])


def _snapshot(folder):
    """Every file and folder under ``folder``: bytes (files) and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in sorted([folder, *folder.rglob("*")])}


def test_scoring_never_writes_to_the_model_folder(compiled_dir, texts, factory, tmp_path):
    """Loading a model and scoring with it, on every route and with a prompts file to embed, leaves every
    file and folder of the artifact byte-identical with unchanged modification times."""
    import shutil

    from oirl_fast.scoring.scorer import Scorer

    queries, prompts, q_emb, p_emb = texts
    local = tmp_path / "model"
    shutil.copytree(compiled_dir, local)
    before = _snapshot(local)
    inp = tmp_path / "q.jsonl"
    _write_queries(inp, queries[:5], bad=False)
    pf = tmp_path / "prompts.jsonl"
    pf.write_text("".join(json.dumps({"id": pid, "text": t}) + "\n" for pid, t in prompts[:3]))
    for route in ("kernel", "compiled", "native"):
        Scorer.for_artifact(art.load_artifact(local), route=route, device="cpu").top(q_emb[:5], 2)
        score_file(local, inp, tmp_path / f"{route}.jsonl", route=route, progress=False, embedder_factory=factory)
    score_file(local, inp, tmp_path / "p.jsonl", prompts=pf, progress=False, cache_dir=tmp_path / "cache")
    assert _snapshot(local) == before


def test_bad_inputs_stop_the_run(model_dir, tmp_path, factory):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(OirlError, match="empty") as exc:
        score_file(model_dir, empty, tmp_path / "o.jsonl", progress=False, embedder_factory=factory)
    assert exc.value.path == str(empty)
    one = tmp_path / "one.jsonl"
    one.write_text('{"id": 1, "query": "q"}\n')
    with pytest.raises(OirlError, match="not a model directory"):
        score_file(tmp_path, one, tmp_path / "o.jsonl", progress=False, embedder_factory=factory)
    with pytest.raises(OirlError, match="not found"):
        score_file(model_dir, tmp_path / "nope.jsonl", tmp_path / "o.jsonl", progress=False)
    assert not (tmp_path / "o.jsonl").exists()


def _app():
    from oirl_fast import cli
    from oirl_fast.cli_score import register

    if any(c.name == "score" for c in cli.app.registered_commands):
        return cli.app
    app = typer.Typer()

    @app.callback()
    def _main():  # keep `score` a subcommand
        pass

    register(app)
    return app


def test_cli_score_and_exit_codes(model_dir, texts, tmp_path, cache_dir):
    queries, _, q_emb, _ = texts
    np.save(tmp_path / "q.npy", q_emb[:25])
    (tmp_path / "ids.txt").write_text("\n".join(qid for qid, _ in queries[:25]) + "\n")
    runner = CliRunner()
    out = tmp_path / "picks.jsonl"
    res = runner.invoke(_app(), ["score", str(model_dir), "--embeddings", str(tmp_path / "q.npy"), "--ids",
                                 str(tmp_path / "ids.txt"), "--out", str(out), "--top-k", "2",
                                 "--summary", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    assert "scoring route: kernel (numba CPU)" in res.output
    assert len(_read(out)) == 25 and all(len(r["top_k"]) == 2 for r in _read(out))
    assert json.loads((tmp_path / "s.json").read_text())["scored"] == 25
    # a query file with a bad line: --strict exits 2 naming file and line, nothing written
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": 1, "query": queries[0][1]}) + "\n{oops\n")
    res = runner.invoke(_app(), ["score", str(model_dir), "--in", str(bad), "--out", str(tmp_path / "x.jsonl"),
                                 "--strict", "--cache-dir", str(cache_dir)])
    assert res.exit_code == 2 and f"{bad}:2" in res.output and not (tmp_path / "x.jsonl").exists()
    res = runner.invoke(_app(), ["score", str(tmp_path), "--in", str(bad), "--out", str(tmp_path / "x.jsonl")])
    assert res.exit_code == 2 and "not a model directory" in res.output


def test_npy_rows_reads_only_what_is_asked(tmp_path):
    from oirl_fast.scoring.inputs import NpyRows

    a = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
    np.save(tmp_path / "a.npy", a)
    rows = NpyRows(tmp_path / "a.npy")
    assert len(rows) == 5 and rows.shape == (5, 3)
    np.testing.assert_array_equal(rows[1:4], a[1:4])
    np.testing.assert_array_equal(rows[np.array([2, 3, 4])], a[2:5])
    raw = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(raw[:-4])
    with pytest.raises(ValueError, match="truncated"):
        NpyRows(tmp_path / "t.npy")
    np.save(tmp_path / "o.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="object arrays"):
        NpyRows(tmp_path / "o.npy")


def test_candidate_prompts_are_cached_in_the_cache_not_the_model(model_dir, texts, tmp_path):
    import shutil

    queries, prompts, q_emb, p_emb = texts
    local = tmp_path / "model"
    shutil.copytree(model_dir, local)
    before = _snapshot(local)
    pf = tmp_path / "prompts.jsonl"
    pf.write_text("".join(json.dumps({"id": pid, "text": t}) + "\n" for pid, t in prompts[:4]))
    inp = tmp_path / "q.jsonl"
    _write_queries(inp, queries[:3], bad=False)
    for run in range(2):
        score_file(local, inp, tmp_path / f"picks{run}.jsonl", prompts=pf, progress=False, cache_dir=tmp_path / "c")
        shards = list((tmp_path / "c").rglob("shard-*.npz"))
        assert len(shards) == 1  # embedded on the first run, read back on the second
    assert _read(tmp_path / "picks0.jsonl") == _read(tmp_path / "picks1.jsonl")
    assert _snapshot(local) == before  # scoring never writes to the model folder


def test_fp16_query_embeddings_are_opt_in_and_checked(model_dir, texts, cache_dir, tmp_path):
    queries = texts[0][:6]
    inp = tmp_path / "q.jsonl"
    _write_queries(inp, queries, bad=False)
    s = score_file(model_dir, inp, tmp_path / "o16.jsonl", precision="fp16", cache_dir=cache_dir, progress=False,
                   device="cpu")
    recs = _read(tmp_path / "o16.jsonl")
    assert s.scored == 6 and all("prompt_id" in r for r in recs)
    with pytest.raises(OirlError, match="--precision must be one of fp32, fp16"):
        score_file(model_dir, inp, tmp_path / "bad.jsonl", precision="bf16", progress=False)
    assert not (tmp_path / "bad.jsonl").exists()


def test_pipelined_output_is_byte_identical_to_the_serial_loop(model_dir, texts, factory, tmp_path):
    queries, _, _, _ = texts
    inp = tmp_path / "q.jsonl"
    _write_queries(inp, queries[:60])
    serial, piped = tmp_path / "serial.jsonl", tmp_path / "piped.jsonl"
    a = score_file(model_dir, inp, serial, progress=False, embedder_factory=factory, chunk_size=7, pipeline=False,
                   top_k=2)
    b = score_file(model_dir, inp, piped, progress=False, embedder_factory=factory, chunk_size=7, pipeline=True,
                   top_k=2)
    assert piped.read_bytes() == serial.read_bytes()
    assert (a.scored, a.errors, a.pairs) == (b.scored, b.errors, b.pairs) and b.errors == 5


def test_pipeline_stops_on_a_failing_stage_and_keeps_a_prefix(tmp_path):
    from oirl_fast.pipelined import run_pipeline
    from oirl_fast.scoring.summary import ScoreSummary

    written = []

    def score(chunk):
        if chunk[0] == 5:
            raise RuntimeError("boom")
        return [f"{x}\n" for x in chunk]

    with pytest.raises(RuntimeError, match="boom"):
        run_pipeline(iter([[i] for i in range(20)]), score, lambda chunk, lines: written.extend(lines),
                     ScoreSummary("i", "o"))
    assert written == [f"{i}\n" for i in range(len(written))] and len(written) <= 5

    def bad_reader():
        yield [0]
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        run_pipeline(bad_reader(), score, lambda chunk, lines: None, ScoreSummary("i", "o"))
