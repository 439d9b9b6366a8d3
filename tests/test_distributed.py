"""Scale-out on Dask: partitioned scoring (merge, parts + manifest, resume, a worker killed mid-run),
distributed training with lightgbm.dask / xgboost.dask against the single-machine fit, CLI errors."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from oirl_fast import cluster as dask_cluster
from oirl_fast.scoring import dask as dask_scoring
from oirl_fast.scoring import partitions
from oirl_fast.train import dask_fit
from oirl_fast.errors import OirlError
from oirl_fast.features import FeatureLayout
from oirl_fast.scoring.stream import score_file
from oirl_fast.train import artifact as art
from oirl_fast.train.reward_model import RewardModel, TrainConfig

D = 384
_ENV_AT_IMPORT = dict(os.environ)
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def _read(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------------------
# Partition planning (no cluster)


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), min_size=0, max_size=40),
    trailing=st.booleans(),
    n_files=st.integers(1, 3),
    parts=st.integers(1, 12),
)
def test_partitions_cover_every_line_once(tmp_path_factory, lines, trailing, n_files, parts):
    root = tmp_path_factory.mktemp("plan")
    files, all_lines = [], []
    for k in range(n_files):
        chunk = lines[k::n_files]
        data = b"\n".join(chunk) + (b"\n" if trailing and chunk else b"")
        f = root / f"s{k}.jsonl"
        f.write_bytes(data)
        files.append(f)
        if data:  # lines as count_lines counts them: a final newline ends the last line
            pieces = data.split(b"\n")
            all_lines.extend(pieces[:-1] if data.endswith(b"\n") else pieces)
    if not any(f.stat().st_size for f in files):
        with pytest.raises(OirlError):
            partitions.plan_partitions(files, parts)
        return
    plan = partitions.plan_partitions(files, parts)
    got, line = [], 1
    for p in plan:
        data = Path(p.file).read_bytes()[p.start : p.stop]
        assert p.first_line == line
        assert p.start == 0 or Path(p.file).read_bytes()[p.start - 1 : p.start] == b"\n"
        chunk = data.split(b"\n")
        if data.endswith(b"\n"):
            chunk = chunk[:-1]
        assert len(chunk) == p.lines
        got.extend(chunk)
        line += p.lines
    assert got == all_lines
    assert [p.index for p in plan] == list(range(len(plan)))


# --------------------------------------------------------------------------------------
# A small synthetic model (384 + 384 features, 16 prompts) and a LocalCluster


@pytest.fixture(scope="module")
def synth_model(tmp_path_factory):
    rng = np.random.default_rng(0)
    P = 16
    p_emb = rng.normal(size=(P, D)).astype(np.float32)
    p_emb /= np.linalg.norm(p_emb, axis=1, keepdims=True)
    q = rng.normal(size=(600, D)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    qi = rng.integers(0, 600, 6000)
    pi = rng.integers(0, P, 6000)
    X = np.hstack([q[qi], p_emb[pi]])
    y = ((q[qi, :8] * p_emb[pi, :8]).sum(1) + 0.3 * rng.normal(size=6000) > 0).astype(float)
    config = TrainConfig(n_estimators=30, early_stopping_rounds=1000)
    model = RewardModel(config).fit(X, y)
    meta = art.ModelMetadata(
        dataset="synthetic", backend="lightgbm", embedding_model=MODEL_ID, feature_layout=FeatureLayout(D, D).to_dict(),
        prompts=[{"id": f"p{i}", "text": f"prompt {i}", "seen_in_training": True} for i in range(P)],
        prompt_embeddings_sha256=art.embeddings_hash(p_emb), protocol={"name": "test"}, train_config=config.to_dict(),
        best_iteration=model.best_iteration, n_train_examples=len(y), calibration=model.calibrator.to_dict(),
    )
    out = tmp_path_factory.mktemp("models") / "synth"
    art.save_artifact(out, model, meta, p_emb, compile_library=False)
    return out


def _queries(n, seed=1):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, D)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _write_embeddings(tmp_path, n, seed=1):
    emb, ids = tmp_path / "q.npy", tmp_path / "ids.txt"
    np.save(emb, _queries(n, seed))
    lines = [f"q{i}" for i in range(n)]
    lines[5] = ""  # an error record: empty id
    ids.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return emb, ids


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    with dask_cluster.local_cluster(2) as cluster, Client(cluster) as c:
        yield c


def test_local_cluster_leaves_this_process_environment_alone(client):
    """Dask's nanny would set OMP_NUM_THREADS=1 here, capping tl2cgen and LightGBM in this process."""
    assert os.environ.get("OMP_NUM_THREADS") != "1" or "OMP_NUM_THREADS" in _ENV_AT_IMPORT
    workers_env = client.run(lambda: os.environ.get("OMP_NUM_THREADS"))
    assert set(workers_env.values()) == {str(max(1, (os.cpu_count() or 1) // 2))}


# --------------------------------------------------------------------------------------
# Scoring


def test_dask_scoring_equals_local_stream(synth_model, client, tmp_path):
    emb, ids = _write_embeddings(tmp_path, 3000)
    local = tmp_path / "local.jsonl"
    score_file(synth_model, None, local, embeddings=emb, ids=ids, top_k=3, min_confidence=0.5, progress=False)
    out = tmp_path / "picks.jsonl"
    s = dask_scoring.score_distributed(synth_model, None, out, embeddings=emb, ids=ids, top_k=3, min_confidence=0.5,
                               partitions=7, client=client, progress=False, chunk_size=100)
    assert out.read_bytes() == local.read_bytes()
    assert s.partitions == 7 and s.lines == 3000 and s.errors == 1 and s.scored == 2999 and s.pairs == 2999 * 16
    assert s.merged and not Path(str(out) + ".parts").exists()
    assert s.route == "kernel (numba CPU)"
    assert s.first_errors == [{"line": 6, "error": "empty id"}]


def test_text_shards_parts_manifest_and_resume(synth_model, client, tmp_path, embedder, cache_dir):
    """A folder of JSONL shards with bad lines: parts + manifest, global line numbers, resume redoes
    only a missing part, and the merge equals score_file on the concatenated input."""
    texts = [f"What is {i} plus {i * 7}?" for i in range(120)]
    embedder.embed(texts)  # the workers find them in the shared cache
    shards = tmp_path / "in"
    shards.mkdir()
    lines = [json.dumps({"id": f"q{i}", "query": t, "tag": i}) for i, t in enumerate(texts)]
    lines[10] = '{"id": "broken", "query": '
    lines[50] = json.dumps({"id": "noq"})
    for k in range(3):
        (shards / f"shard-{k}.jsonl").write_text("\n".join(lines[k * 40 : (k + 1) * 40]) + "\n", encoding="utf-8")
    whole = tmp_path / "whole.jsonl"
    whole.write_text("\n".join(lines) + "\n", encoding="utf-8")
    local = tmp_path / "local.jsonl"
    score_file(synth_model, whole, local, progress=False, cache_dir=cache_dir, with_scores=True)

    parts = tmp_path / "parts"
    s = dask_scoring.score_distributed(synth_model, shards, parts, merge=False, partitions=6, client=client, progress=False,
                               cache_dir=cache_dir, with_scores=True)
    manifest = json.loads((parts / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["partitions"]) == s.partitions >= 3
    recs = manifest["partitions"]
    assert [r["first_line"] for r in recs] == [1] + [sum(r["lines"] for r in recs[:i]) + 1 for i in range(1, len(recs))]
    assert all(r["status"] == "done" and len(r["sha256"]) == 64 for r in recs)
    merged = b"".join((parts / r["part"]).read_bytes() for r in recs)
    assert merged == local.read_bytes()
    errs = {r["line"]: r["error"] for r in _read(local) if "error" in r}
    assert sorted(errs) == [11, 51] and s.errors == 2

    # resume: one part lost, one part corrupted -> only those two are scored again
    (parts / recs[1]["part"]).unlink()
    (parts / recs[2]["part"]).write_text("garbage\n")
    s2 = dask_scoring.score_distributed(synth_model, shards, parts, merge=False, resume=True, client=client, progress=False,
                                cache_dir=cache_dir, with_scores=True)
    assert s2.partitions_resumed == s.partitions - 2
    assert b"".join((parts / r["part"]).read_bytes() for r in recs) == local.read_bytes()

    # merge into one file from the same shards (glob form)
    out = tmp_path / "merged.jsonl"
    dask_scoring.score_distributed(synth_model, str(shards / "shard-*.jsonl"), out, partitions=4, client=client,
                           progress=False, cache_dir=cache_dir, with_scores=True)
    assert out.read_bytes() == local.read_bytes()

    # a resume against other options is refused
    with pytest.raises(OirlError, match="another job"):
        dask_scoring.score_distributed(synth_model, shards, parts, merge=False, resume=True, client=client, progress=False,
                               cache_dir=cache_dir, top_k=2)


def test_worker_killed_mid_run(synth_model, tmp_path):
    """Two worker processes, one SIGKILLed after the first part file appears: every input line is
    in the merged output exactly once, in order, equal to a single-process run."""
    from distributed import Client

    emb, ids = _write_embeddings(tmp_path, 40_000, seed=2)
    local = tmp_path / "local.jsonl"
    score_file(synth_model, None, local, embeddings=emb, ids=ids, progress=False)
    out = tmp_path / "picks.jsonl"
    parts_dir = Path(str(out) + ".parts")
    with dask_cluster.local_cluster(2, silence_logs=50) as cluster, Client(cluster) as c:
        c.run(lambda: __import__("oirl_fast.scoring.dask"))  # warm imports so the kill lands mid-job
        result = {}

        def job():
            try:
                result["summary"] = dask_scoring.score_distributed(synth_model, None, out, embeddings=emb, ids=ids,
                                                           partitions=200, client=c, progress=False, keep_parts=True,
                                                           chunk_size=50)
            except BaseException as exc:  # pragma: no cover - reported below
                result["error"] = exc

        t = threading.Thread(target=job)
        t.start()
        deadline = time.monotonic() + 60
        while not list(parts_dir.glob("part-*.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.005)
        done_at_kill = len(list(parts_dir.glob("part-*.jsonl")))
        pids = c.run(os.getpid)
        victim = sorted(pids.values())[0]
        os.kill(victim, signal.SIGKILL)
        t.join(90)
        assert not t.is_alive()
        assert "error" not in result, result.get("error")
        assert 0 < done_at_kill < 200
        new_pids = c.run(os.getpid)
    assert victim not in new_pids.values()  # the nanny started a fresh worker
    s = result["summary"]
    assert s.lines == 40_000 and s.partitions == 200
    recs = _read(out)
    assert [r["line"] for r in recs] == list(range(1, 40_001))
    assert out.read_bytes() == local.read_bytes()
    assert not list(parts_dir.glob(".part-*.tmp"))
    workers_used = {r["worker_pid"] for r in json.loads((parts_dir / "manifest.json").read_text())["partitions"]}
    assert len(workers_used) >= 2


def test_scheduler_unreachable_is_one_line_exit_2(synth_model, tmp_path, monkeypatch):
    monkeypatch.setattr(dask_cluster, "CONNECT_TIMEOUT", "2s")
    emb, ids = _write_embeddings(tmp_path, 20)
    with pytest.raises(OirlError, match="tcp://127.0.0.1:1"):
        dask_scoring.score_distributed(synth_model, None, tmp_path / "o.jsonl", embeddings=emb, ids=ids,
                               scheduler="tcp://127.0.0.1:1", progress=False)
    from oirl_fast.cli import app

    r = CliRunner().invoke(app, ["score", str(synth_model), "--embeddings", str(emb), "--ids", str(ids),
                                 "--out", str(tmp_path / "o.jsonl"), "--engine", "dask", "--scheduler", "tcp://127.0.0.1:1"])
    assert r.exit_code == 2
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:1" in r.output
    r = CliRunner().invoke(app, ["score", str(synth_model), "--embeddings", str(emb), "--ids", str(ids),
                                 "--out", str(tmp_path / "o.jsonl"), "--partitions", "3"])
    assert r.exit_code == 2 and "need --engine dask" in r.output


def test_cli_score_dask_no_merge(synth_model, client, tmp_path):
    """The CLI on a scheduler address (the module's cluster), writing a parts folder."""
    from oirl_fast.cli import app

    emb, ids = _write_embeddings(tmp_path, 500)
    out = tmp_path / "parts"
    r = CliRunner().invoke(app, ["score", str(synth_model), "--embeddings", str(emb), "--ids", str(ids),
                                 "--out", str(out), "--engine", "dask", "--scheduler", client.scheduler.address,
                                 "--partitions", "5", "--no-merge", "--summary", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.glob("part-*.jsonl")) == [f"part-{i:05d}.jsonl" for i in range(5)]
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["lines"] == 500 and s["partitions"] == 5 and s["workers"] == 2


# --------------------------------------------------------------------------------------
# Training


def _synthetic_log(cache_dir, n_questions=2500, n_prompts=6, repeats=2, seed=0):
    """A log whose outcomes depend on (query, prompt) embeddings; the embeddings go into the
    shared embedding cache, so client and workers read them instead of running the text model."""
    import pyarrow as pa

    from oirl_fast.embed import EmbeddingCache, text_key

    rng = np.random.default_rng(seed)
    qt = [f"synthetic question {seed}-{i}" for i in range(n_questions)]
    pt = [f"synthetic prompt {seed}-{j}" for j in range(n_prompts)]
    q = rng.normal(size=(n_questions, D)).astype(np.float32)
    pe = rng.normal(size=(n_prompts, D)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    pe /= np.linalg.norm(pe, axis=1, keepdims=True)
    EmbeddingCache(cache_dir).add([text_key(t) for t in qt + pt], np.vstack([q, pe]))
    logit = 250 * (q[:, None, :16] * pe[None, :, :16]).sum(-1) + 30 * q[:, None, 16] - 0.5
    prob = 1 / (1 + np.exp(-logit))
    rows = {k: [] for k in ("dataset", "query_id", "query", "group", "gold", "prompt_id", "prompt", "correct")}
    for i in range(n_questions):
        for r in range(repeats):
            for j in range(n_prompts):
                rows["dataset"].append("synthetic")
                rows["query_id"].append(f"q{i}-{r}")
                rows["query"].append(qt[i])
                rows["group"].append(f"g{i}")
                rows["gold"].append("0")
                rows["prompt_id"].append(f"p{j}")
                rows["prompt"].append(pt[j])
                rows["correct"].append(bool(rng.random() < prob[i, j]))
    return pa.table(rows)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["lightgbm", "xgboost"])
def test_distributed_training_auc_matches_single_machine(backend, client, tmp_path, cache_dir):
    """Same log, same config: lightgbm.dask / xgboost.dask on 2 workers against the single-machine
    fit; held-out AUC within 0.01, and the artifact is complete (compiled library, kernel path)."""
    import pyarrow.parquet as pq

    from oirl_fast.embed import Embedder
    from oirl_fast.evaluation import evaluate
    from oirl_fast.train.fit import fit_reward_model, write_artifact
    from oirl_fast.schema import conform
    from oirl_fast.scoring.candidates import model_candidates
    from oirl_fast.scoring.scorer import Scorer
    from oirl_fast.splits import Protocol

    log = conform(_synthetic_log(cache_dir))
    embedder = Embedder(cache_dir=cache_dir, progress=False)
    config = TrainConfig(backend=backend, n_estimators=150)
    proto = Protocol("grouped", seed=0)
    single = write_artifact(fit_reward_model(log, proto, config, embedder, log=lambda s: None),
                            tmp_path / "single", compile_library=False)
    shards = tmp_path / "log"  # the log as Parquet shards, read back by the distributed trainer
    shards.mkdir()
    n = log.num_rows
    for k in range(3):
        pq.write_table(log.slice(k * n // 3, (k + 1) * n // 3 - k * n // 3), shards / f"part-{k}.parquet")
    compile_library = backend == "lightgbm"
    from oirl_fast.encoders import EncoderSettings

    cluster = dask_fit.DaskTraining(client=client, encoder=EncoderSettings(cache_dir=cache_dir))
    dask_fit.train_distributed(shards, proto, config, tmp_path / "dask", cluster=cluster,
                               compile_library=compile_library, log_fn=lambda s: None)
    loaded = art.load_artifact(tmp_path / "dask")
    engine = loaded.metadata.metrics["engine"]
    assert engine["name"] == "dask" and engine["library"] == f"{backend}.dask" and engine["workers"] == 2
    assert loaded.metadata.n_train_examples == single.metadata.n_train_examples
    assert loaded.metadata.prompt_ids == single.metadata.prompt_ids
    assert loaded.metadata.prompt_embeddings_sha256 == single.metadata.prompt_embeddings_sha256
    assert loaded.model.calibrator is not None and 1 <= loaded.metadata.best_iteration <= 150
    assert loaded.library_path.is_file() if compile_library else loaded.library_path is None
    assert Scorer.for_artifact(loaded, model_candidates(loaded), device="cpu").route == "kernel"
    auc_single = evaluate(single, log, embedder)["classification"]["train_prompts"]["auc"]
    auc_dask = evaluate(loaded, log, embedder)["classification"]["train_prompts"]["auc"]
    print(f"AUC {backend}: single {auc_single:.4f} dask {auc_dask:.4f} trees {single.metadata.best_iteration} / {loaded.metadata.best_iteration}")
    assert auc_single > 0.7
    assert abs(auc_single - auc_dask) <= 0.01, (auc_single, auc_dask)


def test_loss_curve_matches_lightgbm_predictions():
    """The per-round validation loss the Dask fit stops on is LightGBM's own raw score, round by round."""
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5)).astype(np.float32)
    y = (X[:, 0] + 0.5 * rng.normal(size=400) > 0).astype(float)
    w = rng.integers(1, 4, 400).astype(float)
    b = lgb.train({"objective": "cross_entropy", "num_leaves": 7, "verbosity": -1}, lgb.Dataset(X, y, weight=w),
                  num_boost_round=12)
    table = dask_fit._leaf_table(b)
    curve = dask_fit._loss_curve_block(X, y, w, b, table)[0]
    for k in (1, 5, 12):
        p = b.predict(X, num_iteration=k)
        expected = -(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum()
        assert curve[k - 1] == pytest.approx(expected, rel=1e-9)


def test_early_stopping_point_follows_lightgbm_rule():
    curve = np.array([5, 4, 3, 3.5, 3.2, 3.1, 2.9, 3, 3, 3, 3])
    assert dask_fit.early_stopping_point(curve, 3) == 3  # stops at round 6, before the later 2.9
    curve = np.array([5, 4, 3, 3.5, 3.2, 2.9, 3, 3, 3, 2.0])
    assert dask_fit.early_stopping_point(curve, 3) == 6
    assert dask_fit.early_stopping_point(np.array([5, 4, 4.1, 4.2, 4.3, 1.0]), 3) == 2
    assert dask_fit.early_stopping_point(np.array([3.0, 2.0, 1.0]), 40) == 3


@pytest.mark.slow
def test_cli_train_dask(client, tmp_path, cache_dir):
    """`oirl train --engine dask --scheduler ADDRESS` on a folder of Parquet shards writes a loadable artifact."""
    import pyarrow.parquet as pq

    from oirl_fast.cli import app
    from oirl_fast.schema import conform

    log = conform(_synthetic_log(cache_dir, n_questions=400, seed=1))
    shards = tmp_path / "log"
    shards.mkdir()
    pq.write_table(log.slice(0, log.num_rows // 2), shards / "a.parquet")
    pq.write_table(log.slice(log.num_rows // 2), shards / "b.parquet")
    out = tmp_path / "model"
    r = CliRunner().invoke(app, ["train", str(shards), "--out", str(out), "--engine", "dask", "--scheduler",
                                 client.scheduler.address, "--n-estimators", "20", "--no-compile",
                                 "--cache-dir", str(cache_dir)])
    assert r.exit_code == 0, r.output
    meta = art.load_artifact(out).metadata
    assert meta.metrics["engine"]["name"] == "dask" and meta.best_iteration <= 20
    r = CliRunner().invoke(app, ["train", str(shards), "--out", str(out), "--workers", "2"])
    assert r.exit_code == 2 and "need --engine dask" in r.output


def test_prompts_file_and_strict(synth_model, client, tmp_path):
    """A --prompts file's candidates reach the workers; --strict stops before anything is written."""
    emb, ids = _write_embeddings(tmp_path, 400)
    rng = np.random.default_rng(5)
    vecs = rng.normal(size=(5, D)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"c{i}", "text": f"candidate {i}", "embedding": v.tolist(),
                                           "embedding_model": MODEL_ID}) + "\n" for i, v in enumerate(vecs)))
    local = tmp_path / "local.jsonl"
    score_file(synth_model, None, local, embeddings=emb, ids=ids, prompts=prompts, top_k=2, progress=False)
    out = tmp_path / "picks.jsonl"
    s = dask_scoring.score_distributed(synth_model, None, out, embeddings=emb, ids=ids, prompts=prompts, top_k=2,
                               partitions=3, client=client, progress=False)
    assert out.read_bytes() == local.read_bytes() and s.candidates == 5
    assert {r.get("prompt_id") for r in _read(out)} <= {None, "c0", "c1", "c2", "c3", "c4"}

    with pytest.raises(OirlError, match=r"ids.txt:6: empty id"):
        dask_scoring.score_distributed(synth_model, None, tmp_path / "strict.jsonl", embeddings=emb, ids=ids, strict=True,
                               client=client, progress=False)
    assert not (tmp_path / "strict.jsonl").exists() and not (tmp_path / "strict.jsonl.parts").exists()
