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
    from oirl_fast.answer.run import AnswerConfig, answer
    from oirl_fast.collect.run import CollectConfig, collect
    from oirl_fast.scoring.dask import score_distributed

    model_out, coll_out, parts_out, answer_out = (tmp_path / n for n in ("model", "coll", "parts", "answers"))
    holders = [_hold_lock(p) for p in (model_out, coll_out, parts_out, answer_out)]
    try:
        with pytest.raises(OirlError, match=f"pid {holders[0].pid}"):
            oirl.fit(mawps_small, model_out, n_estimators=2, compile=False, progress=False)
        with pytest.raises(OirlError, match=f"pid {holders[1].pid}"):
            collect(CollectConfig(model="none", queries="gsm8k", prompts="published", out=coll_out))
        with pytest.raises(OirlError, match=f"pid {holders[2].pid}"):
            score_distributed(tmp_path / "m", tmp_path / "q.jsonl", parts_out)
        with pytest.raises(OirlError, match=f"pid {holders[3].pid}"):
            answer(AnswerConfig(model=tmp_path / "m", queries="gsm8k", policy="best", out=answer_out))
    finally:
        for h in holders:
            h.kill()
            h.wait()
    assert not model_out.exists() and not coll_out.exists() and not answer_out.exists()


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


# --------------------------------------------------------------------------------------
# 5. Errors that say what is wrong


def _one_line_error(res, *words):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and all(w in lines[0] for w in words), res.output


@pytest.mark.parametrize("kind", ["xz", "utf-16", "zip", "npy", "nul"])
def test_a_whole_file_in_the_wrong_format_is_refused_from_its_first_bytes(kind, queries, model_dir, tmp_path,
                                                                         static_cache):
    import lzma

    text = queries.read_bytes()  # (gzip is read as it is: tests/test_inputs.py)
    data = {"xz": lambda: lzma.compress(text), "utf-16": lambda: text.decode().encode("utf-16"),
            "zip": lambda: _zip(text), "nul": lambda: b"\x00" * 5000 + text,
            "npy": lambda: _npy()}[kind]()
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(data)
    out = tmp_path / "o.jsonl"
    res = _run("score", model_dir, "--in", bad, "--out", out, cache_dir=static_cache)
    _one_line_error(res, str(bad), {"xz": "xz", "utf-16": "UTF-16", "zip": "zip", "npy": ".npy",
                                    "nul": "binary"}[kind])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "q.jsonl"]


def _zip(data: bytes) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("q.jsonl", data)
    return buf.getvalue()


def _npy() -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.zeros((3, 4), np.float32))
    return buf.getvalue()


def test_parquet_input_is_read_as_the_queries_it_holds(queries, model_dir, tmp_path, static_cache):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(x) for x in queries.read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "q.parquet")
    for src, out in ((queries, "j.jsonl"), (tmp_path / "q.parquet", "p.jsonl")):
        res = _run("score", model_dir, "--in", src, "--out", tmp_path / out, cache_dir=static_cache)
        assert res.exit_code == 0, res.output
    assert (tmp_path / "p.jsonl").read_bytes() == (tmp_path / "j.jsonl").read_bytes()


def test_prompt_ids_must_be_strings_or_integers(model_dir, queries, tmp_path, static_cache):
    for bad in (None, {"a": 1}, [1], 1.5, True):
        prompts = tmp_path / "p.jsonl"
        prompts.write_text(json.dumps({"id": "ok", "text": "Think."}) + "\n" + json.dumps({"id": bad, "text": "x"}) + "\n")
        res = _run("score", model_dir, "--in", queries, "--out", tmp_path / "o.jsonl", "--prompts", prompts,
                   cache_dir=static_cache)
        _one_line_error(res, f"{prompts}:2", "must be a string or an integer")


def test_an_unreadable_file_is_reported_as_unreadable_not_unwritable(tmp_path, monkeypatch):
    import errno

    from oirl_fast.paths import write_error

    f = tmp_path / "q.jsonl"
    f.write_text("{}\n")
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False)  # tests run as root, who reads everything
    exc = write_error(PermissionError(errno.EACCES, "Permission denied", str(f)), None)
    assert "cannot read" in str(exc) and "write" not in str(exc)


def test_no_warning_with_its_source_line_before_a_one_line_error(model_dir, tmp_path, static_cache):
    emb = np.full((3, 256), 1e300, dtype=np.float64)  # beyond float32: numpy warns on the cast
    np.save(tmp_path / "e.npy", emb)
    (tmp_path / "ids.txt").write_text("a\nb\nc\n")
    res = _run("score", model_dir, "--embeddings", tmp_path / "e.npy", "--ids", tmp_path / "ids.txt",
               "--out", tmp_path / "o.jsonl", "--strict", cache_dir=static_cache)
    _one_line_error(res, "NaN or infinity")


def test_a_killed_write_leaves_no_temporary_folder_for_good(tmp_path):
    from oirl_fast.atomic import atomic_dir

    target = tmp_path / "model"
    code = ("import os, sys; from oirl_fast.atomic import atomic_dir\n"
            "with atomic_dir(sys.argv[1]) as tmp:\n    (tmp / 'x').write_text('1'); os.kill(os.getpid(), 9)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(target)])
    assert proc.returncode == -9
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the killed write's folder
    with atomic_dir(target) as tmp:
        (tmp / "y").write_text("2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_resume_onto_a_finished_output_same_job_or_another(model_dir, queries, tmp_path, static_cache):
    out = tmp_path / "o.jsonl"
    assert _run("score", model_dir, "--in", queries, "--out", out, cache_dir=static_cache).exit_code == 0
    before = (out.read_bytes(), out.stat().st_mtime_ns)
    res = _run("score", model_dir, "--in", queries, "--out", out, "--resume", cache_dir=static_cache)
    assert res.exit_code == 0 and "nothing to do" in res.output, res.output
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before
    res = _run("score", model_dir, "--in", queries, "--out", out, "--resume", "--top-k", "2", cache_dir=static_cache)
    _one_line_error(res, "finished output of another job", "--top-k")
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before


# --------------------------------------------------------------------------------------
# 4. Tracebacks and hangs


def _cli_subprocess(args, timeout=180, cwd=None, stderr=subprocess.PIPE, env=None, prelude=""):
    code = (prelude + "import sys; from oirl_fast.cli import app\n"
            "sys.argv = ['oirl'] + [__import__('os').fsdecode(a) for a in sys.argv[1:]]\napp()\n")
    return subprocess.run([sys.executable, "-c", code, *map(os.fsencode, args)], stdout=subprocess.PIPE,
                          stderr=stderr, timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("service", ["http", "banner"])
def test_a_scheduler_address_that_is_not_dask_gives_one_line_quickly(service, model_dir, queries, tmp_path,
                                                                     static_cache):
    import http.server
    import socket
    import threading

    if service == "http":  # the dashboard-port mistake: a server that waits for a request
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        port = srv.server_address[1]
    else:  # a service that speaks first, something else than Dask
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen()

        def serve():
            while True:
                c, _ = ls.accept()
                c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                c.close()

        threading.Thread(target=serve, daemon=True).start()
        port = ls.getsockname()[1]
    proc = _cli_subprocess(["score", model_dir, "--in", queries, "--out", tmp_path / "o.jsonl", "--engine", "dask",
                            "--scheduler", f"tcp://127.0.0.1:{port}"], timeout=120,
                           prelude="import oirl_fast.cluster as c; c.PROBE_SECONDS = 2\n",
                           env={"OIRL_CACHE_DIR": str(static_cache)})
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert err.count("\n") == 1 and "Dask" in err and "Traceback" not in err, err


def test_file_names_that_are_not_utf8(model_dir, queries, tmp_path, static_cache):
    bad_in, bad_out = os.fsdecode(b"q\xff.jsonl"), os.fsdecode(b"o\xfe.jsonl")
    (tmp_path / bad_in).write_bytes(queries.read_bytes())
    env = {"OIRL_CACHE_DIR": str(static_cache)}
    proc = _cli_subprocess(["score", model_dir, "--in", tmp_path / bad_in, "--out", tmp_path / bad_out], env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert len((tmp_path / bad_out).read_text().splitlines()) == 30
    # a model folder's path goes to LightGBM and treelite, which need UTF-8: refused before the fit
    proc = _cli_subprocess(["train", tmp_path / bad_in, "--out", tmp_path / os.fsdecode(b"m\xff")], env=env)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "not valid UTF-8" in err and "Traceback" not in err, err


def test_a_deleted_working_folder_gives_one_line(model_dir, tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    code = ("import os, sys; os.chdir(sys.argv[1]); os.rmdir(sys.argv[1]); from oirl_fast.cli import app\n"
            "sys.argv = ['oirl', 'score', sys.argv[2], '--in', 'q.jsonl', '--out', 'o.jsonl']; app()\n")
    proc = subprocess.run([sys.executable, "-c", code, str(gone), str(model_dir)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "current folder no longer exists" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_endless_line_is_bounded(model_dir, queries, tmp_path, static_cache):
    res = _run("score", model_dir, "--in", "/dev/zero", "--out", tmp_path / "z.jsonl", cache_dir=static_cache)
    _one_line_error(res, "/dev/zero")
    long = tmp_path / "long.jsonl"
    long.write_bytes(b'{"id": 0, "query": "' + b"a" * 300_000 + b'"}\n' + queries.read_bytes())
    res = _run("score", model_dir, "--in", long, "--out", tmp_path / "o.jsonl", "--max-line-bytes", 100_000,
               cache_dir=static_cache)
    assert res.exit_code == 0, res.output
    recs = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(recs) == 31 and "--max-line-bytes" in recs[0]["error"] and all("prompt_id" in r for r in recs[1:])


def test_a_closed_stderr_does_not_decide_the_fate_of_the_data(model_dir, queries, tmp_path, static_cache):
    r, w = os.pipe()
    os.close(r)  # `... 2>&1 | head -1` once head has gone: every write to stderr fails
    try:
        proc = _cli_subprocess(["score", model_dir, "--in", queries, "--out", tmp_path / "o.jsonl"], stderr=w,
                               env={"OIRL_CACHE_DIR": str(static_cache)})
    finally:
        os.close(w)
    assert proc.returncode == 0
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 30
    assert not (tmp_path / "o.jsonl.partial").exists()


# --------------------------------------------------------------------------------------
# 2. Caches are checked, not trusted


def _static_folder(cache: Path) -> Path:
    (folder,) = (cache / "encoders").iterdir()
    return folder


def test_every_file_that_shapes_a_static_vector_is_hashed_and_recorded(model_dir, static_cache, tmp_path,
                                                                      monkeypatch, queries):
    import shutil

    from oirl_fast import encoders
    from oirl_fast.encoders import StaticBuildChanged, StaticEncoder, static_files_sha256

    pristine = _static_folder(static_cache)
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert meta["embedder"]["identity"]["files_sha256"] == static_files_sha256(pristine)

    cache = tmp_path / "cache"
    shutil.copytree(static_cache / "encoders", cache / "encoders")
    folder = _static_folder(cache)
    for name, edit in (("config.json", lambda c: {**c, "normalize": False}),
                       ("config.json", lambda c: {**c, "max_length": 4})):
        config = json.loads((pristine / name).read_text())
        (folder / name).write_text(json.dumps(edit(config)))
        with pytest.raises(StaticBuildChanged, match="do not match the hash recorded"):
            StaticEncoder(folder)
    tok = folder / "tokenizer.json"
    tok.write_text(tok.read_text().replace('"lowercase": true', '"lowercase": false'))
    # on a mismatch the build is made again (here: the pristine copy stands for the ~15 s distillation)
    notes = []
    monkeypatch.setattr(encoders, "build_static",
                        lambda cache_dir, log=None: folder if folder.exists() else Path(shutil.copytree(pristine, folder)))
    enc = encoders.make_encoder("static", cache, log=notes.append)
    assert enc.files_sha256 == static_files_sha256(pristine) and "building it again" in notes[0]

    # an edited build whose own record was made to agree is still refused: the artifact holds the hash
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "normalize": False}))
    settings = json.loads((folder / "settings.json").read_text())
    (folder / "settings.json").write_text(json.dumps({**settings, "files_sha256": static_files_sha256(folder)}))
    monkeypatch.undo()
    # (a model written before artifacts carried their embedder: this one's copy, without it)
    legacy = tmp_path / "legacy"
    shutil.copytree(model_dir, legacy)
    shutil.rmtree(legacy / "embedder")
    manifest = json.loads((legacy / "manifest.json").read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("embedder/")}
    (legacy / "manifest.json").write_text(json.dumps(manifest))
    res = _run("score", legacy, "--in", queries, "--out", tmp_path / "o.jsonl", "--cache-dir", cache)
    assert res.exit_code == 2 and "files_sha256" in " ".join(res.output.split()), res.output
    assert not (tmp_path / "o.jsonl").exists()
    # a model that carries its embedder does not read the cache's build at all
    res = _run("score", model_dir, "--in", queries, "--out", tmp_path / "o.jsonl", "--cache-dir", cache)
    assert res.exit_code == 0, res.output


def test_the_cached_compiled_library_is_verified_against_the_model_before_loading(model_dir, tmp_path, monkeypatch):
    from oirl_fast.train import artifact as art
    from oirl_fast.train.compile import CompiledPredictor

    monkeypatch.setenv("OIRL_CACHE_DIR", str(tmp_path / "cache"))
    a = art.load_artifact(model_dir)  # trained without a library: the compiled route builds one in the cache
    notes = []
    lib, sha = art.verified_library(a, notes.append)
    assert lib == art.cached_library_path(a) and len(notes) == 1
    X = np.random.default_rng(0).standard_normal((20, a.layout.n_features)).astype(np.float32)
    want = CompiledPredictor(lib, sha256=sha).predict(X)

    damages = {"truncated": lambda: lib.write_bytes(lib.read_bytes()[: lib.stat().st_size // 2]),
               "replaced": lambda: lib.write_bytes(lib.read_bytes()[:-1] + bytes([lib.read_bytes()[-1] ^ 0xFF])),
               "another model's": lambda: art._record_path(lib).write_text(json.dumps(
                   {**json.loads(art._record_path(lib).read_text()), "model_sha256": "0" * 64}))}
    for what, damage in damages.items():
        damage()
        notes.clear()
        again, sha2 = art.verified_library(a, notes.append)
        assert again == lib and len(notes) == 1 and "building it again" in notes[0], what
        np.testing.assert_array_equal(CompiledPredictor(again, sha256=sha2).predict(X), want)
    # the check is made on the very file loaded
    with pytest.raises(OirlError, match="does not match its checksum"):
        CompiledPredictor(lib, sha256="0" * 64)


def test_outputs_and_artifacts_are_written_with_the_users_umask(tmp_path, static_cache, make_artifact):
    from oirl_fast.encoders.static_files import _ordinary_permissions

    old = os.umask(0o022)
    try:
        make_artifact(tmp_path / "m", n_estimators=2, n_prompts=2)
        assert (tmp_path / "m").stat().st_mode & 0o777 == 0o755
        assert all(p.stat().st_mode & 0o777 == 0o644 for p in (tmp_path / "m").iterdir() if p.is_file())
        f = tmp_path / "s" / "model.safetensors"
        f.parent.mkdir()
        f.write_bytes(b"x")
        f.chmod(0o600)  # as safetensors writes it
        _ordinary_permissions(f.parent)
        assert f.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
    assert (_static_folder(static_cache) / "model.safetensors").stat().st_mode & 0o044 == 0o044
