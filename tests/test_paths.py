"""No command destroys a file it was not asked to write (issue 10, class 1), output-path failures are one
line and exit 2 (class 2), output names match the format (class 3), and `oirl score` works in pipes (class 4).

The property test points every (input, output) pair of path arguments of every command at one file, by the
same name, a symlink and a hard link, and checks the command stops with exit code 2 before touching it. The
check runs before any heavy work, so a stand-in model folder (a metadata.json with the artifact's keys)
is enough there; the tests that score use a real artifact (``make_artifact``).
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from oirl_fast.cli import app
from oirl_fast.errors import OirlError
from oirl_fast.paths import Output, check_paths

runner = CliRunner()
OIRL = [sys.executable, "-m", "oirl_fast.cli"]


def _cli(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


def _fake_model(folder: Path) -> Path:
    """A folder that looks like a model artifact to the path check (never loaded: the check stops first)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metadata.json").write_text(json.dumps({"schema_version": 2, "feature_layout": {}, "prompts": []}))
    (folder / "model.txt").write_text("trees\n")
    return folder


# --------------------------------------------------------------------------------------
# The property test: every command, every (input, output) pair, three ways to name one file

# command -> (fixed arguments builder, [(input option, output option, input file name, output suffix)])
# An input given as a folder (MODEL, --source) is represented by a file inside it.
def _commands(tmp: Path):
    model = _fake_model(tmp / "model")
    src = tmp / "source"
    src.mkdir()
    (src / "gsm8k.jsonl.gz").write_bytes(b"source bytes")
    cache = tmp / "cache"
    cache.mkdir()
    (cache / "shard-0.npz").write_bytes(b"cache bytes")
    return {
        "import": (lambda io: ["import", "gsm8k", "--source", io.get("--source", src), "--out", io["--out"]],
                   [("--source", "--out", src / "gsm8k.jsonl.gz", ".parquet")]),
        "convert": (lambda io: ["convert", io["SRC"], io["DST"]], [("SRC", "DST", "log.jsonl", ".jsonl")]),
        "train": (lambda io: ["train", io.get("LOG", tmp / "l.parquet"), "--out", io["--out"], "--cache-dir",
                              io.get("--cache-dir", cache)],
                  [("LOG", "--out", "log.parquet", ""), ("--cache-dir", "--out", cache / "shard-0.npz", "")]),
        "evaluate": (lambda io: ["evaluate", io.get("MODEL", model), io.get("LOG", tmp / "l.parquet"),
                                 *[a for o in ("--report", "--plot", "--reliability-plot") if o in io for a in (o, io[o])]],
                     [(i, o, f, s) for i, f in (("MODEL", model / "metadata.json"), ("LOG", "log.parquet"))
                      for o, s in (("--report", ".json"), ("--plot", ".png"), ("--reliability-plot", ".png"))]),
        "score": (lambda io: ["score", io.get("MODEL", model),
                              *(["--embeddings", io.get("--embeddings", tmp / "e.npy"), "--ids", io.get("--ids", tmp / "i.txt")]
                                if "--embeddings" in io or "--ids" in io else ["--in", io.get("--in", tmp / "q.jsonl")]),
                              *([] if "--prompts" not in io else ["--prompts", io["--prompts"]]),
                              "--out", io.get("--out", tmp / "o.jsonl"),
                              *([] if "--summary" not in io else ["--summary", io["--summary"]])],
                  [(i, o, f, s) for i, f in (("MODEL", model / "model.txt"), ("--in", "q.jsonl"), ("--prompts", "p.jsonl"),
                                             ("--embeddings", "e.npy"), ("--ids", "i.txt"))
                   for o, s in (("--out", ".jsonl"), ("--summary", ".json"))]),
        "score-dask": (lambda io: ["score", model, "--in", io["--in"], "--out", io["--out"], "--engine", "dask"],
                       [("--in", "--out", "q.jsonl", ".jsonl")]),
        "train-dask": (lambda io: ["train", io["LOG"], "--out", io["--out"], "--engine", "dask"],
                       [("LOG", "--out", "log.parquet", "")]),
        "tradeoff": (lambda io: ["tradeoff", "--model", io.get("--model", model), "--log", io.get("--log", tmp / "l.parquet"),
                                 "--plot", io["--plot"]],
                     [("--model", "--plot", model / "model.txt", ".png"), ("--log", "--plot", "log.parquet", ".png")]),
        "grade": (lambda io: ["grade", "--in", io["--in"], *[a for o in ("--out", "--summary") if o in io for a in (o, io[o])]],
                  [("--in", "--out", "log.parquet", ".parquet"), ("--in", "--summary", "log.parquet", ".json")]),
        "collect": (lambda io: ["collect", "--model", tmp / "llm", "--queries", io.get("--queries", "gsm8k"),
                                "--prompts", io.get("--prompts", "published"), "--out", io["--out"]],
                    [("--queries", "--out", "q.jsonl", ""), ("--prompts", "--out", "p.jsonl", "")]),
        "demo": (lambda io: ["demo", "--source", io.get("--source", src), "--out", io["--out"]],
                 [("--source", "--out", src / "gsm8k.jsonl.gz", "")]),
    }


def _cases():
    # the command table needs a folder; build it once on a throwaway path just to list the cases
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        table = _commands(Path(d))
        return [(cmd, i, o, how) for cmd, (_, pairs) in table.items() for i, o, _, _ in pairs
                for how in ("same", "symlink", "hardlink")]


@pytest.mark.parametrize("cmd,in_opt,out_opt,how", _cases())
def test_no_command_overwrites_its_input(tmp_path, cmd, in_opt, out_opt, how):
    build, pairs = _commands(tmp_path)[cmd]
    _, _, name, suffix = next(p for p in pairs if p[0] == in_opt and p[1] == out_opt)
    target = name if isinstance(name, Path) else tmp_path / name
    if not target.exists():
        target.write_bytes(b"the user's bytes\n")
    before = target.read_bytes()
    if how == "same":
        out = target
    elif how == "symlink":
        out = tmp_path / f"link{suffix}"
        out.symlink_to(target)
    else:
        out = tmp_path / f"hard{suffix}"
        os.link(target, out)
    # a folder input (a model, a data folder, the cache) is given as the folder; its file is what the output names
    io = {out_opt: out, in_opt: target.parent if in_opt in ("MODEL", "--model", "--source", "--cache-dir") else target}
    res = _cli(*build(io))
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1, res.output
    reasons = ("is the same file as the input", "is a file; this writes a folder", "must end with",
               "inside the model artifact")
    assert any(r in res.output for r in reasons), res.output  # refused by the path check, not by a later error
    assert target.read_bytes() == before


# --------------------------------------------------------------------------------------
# Class 1: artifacts, train --out, identity through .., several outputs


def test_outputs_inside_a_model_folder_are_refused(tmp_path):
    model = _fake_model(tmp_path / "m")
    (tmp_path / "log.parquet").write_bytes(b"x")
    (tmp_path / "q.jsonl").write_text('{"query": "q"}\n')
    for args in (["evaluate", tmp_path / "m2", tmp_path / "log.parquet", "--report", model / "r.json"],
                 ["score", tmp_path / "m2", "--in", tmp_path / "q.jsonl", "--out", model / "sub" / ".." / "o.jsonl"],
                 ["convert", tmp_path / "log.parquet", model / "compiled" / "x.parquet"],
                 ["train", tmp_path / "log.parquet", "--out", model / "inner"]):
        res = _cli(*args)
        assert res.exit_code == 2 and "inside the model artifact" in res.output, (args, res.output)
    assert sorted(p.name for p in model.iterdir()) == ["metadata.json", "model.txt"]


def test_train_out_replaces_only_a_model_or_an_empty_folder(tmp_path, make_artifact):
    log = tmp_path / "log.parquet"
    log.write_bytes(b"not read: the check comes first")
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("years of work")
    afile = tmp_path / "file.bin"
    afile.write_bytes(b"keep")
    for out, why in ((other, "not a model artifact"), (afile, "is a file")):
        for engine in ("local", "dask"):
            res = _cli("train", log, "--out", out, "--engine", engine)
            assert res.exit_code == 2 and why in res.output, res.output
    assert (other / "thesis.tex").read_text() == "years of work" and afile.read_bytes() == b"keep"
    # a real model folder, an empty folder and a missing one pass the check
    model = make_artifact(tmp_path / "model", n_estimators=2)
    (tmp_path / "empty").mkdir()
    for out in (model, tmp_path / "empty", tmp_path / "new" / "model"):
        check_paths({"LOG": log}, [Output(out, "--out", kind="artifact")])
    # ... but a log inside the model folder it would replace does not
    inside = model / "log.parquet"
    inside.write_bytes(b"x")
    with pytest.raises(OirlError, match="lies inside the --out folder"):
        check_paths({"LOG": inside}, [Output(model, "--out", kind="artifact")])


def test_two_outputs_naming_one_file_and_dotdot_are_caught(tmp_path):
    (tmp_path / "sub").mkdir()
    log = tmp_path / "log.jsonl"
    log.write_text("{}\n")
    with pytest.raises(OirlError, match="name the same file"):
        check_paths({}, [Output(tmp_path / "a.png", "--plot"), Output(tmp_path / "sub" / ".." / "a.png", "--reliability-plot")])
    with pytest.raises(OirlError, match="same file as the input"):
        check_paths({"SRC": log}, [Output(tmp_path / "sub" / ".." / "log.jsonl", "DST")])


# --------------------------------------------------------------------------------------
# Class 2: output-path failures


def test_missing_parent_folder_is_created_and_a_folder_output_is_refused(tmp_path):
    deep = tmp_path / "a" / "b" / "c.json"
    check_paths({}, [Output(deep, "--report", (".json",))])
    assert deep.parent.is_dir() and not deep.exists() and list(deep.parent.iterdir()) == []
    (tmp_path / "d.jsonl").mkdir()
    res = _cli("convert", tmp_path / "nope.jsonl", tmp_path / "d.jsonl")
    assert res.exit_code == 2 and "is a folder" in res.output and "Traceback" not in res.output


def test_read_only_folder_stops_before_the_work(tmp_path, monkeypatch):
    import tempfile

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", k.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    log = tmp_path / "log.parquet"
    log.write_bytes(b"never read")
    res = _cli("train", log, "--out", tmp_path / "model")
    assert res.exit_code == 2 and "cannot write here" in res.output and "Permission denied" in res.output
    assert not (tmp_path / "model").exists()


def test_full_disk_is_one_line(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from oirl_fast.schema import from_records, write_logs

    src = tmp_path / "log.parquet"
    write_logs(from_records([{"dataset": "d", "query_id": "1", "query": "1+1?", "gold": "2", "prompt_id": "p",
                              "prompt": "Think.", "correct": True}]), src)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    before = src.read_bytes()
    res = _cli("convert", src, tmp_path / "out.parquet")
    assert res.exit_code == 2 and "No space left" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out.parquet").exists() and src.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["log.parquet"]  # no temporary file left


# --------------------------------------------------------------------------------------
# Class 3: output names match the format written


@pytest.mark.parametrize("args", [["convert", "{log}", "{tmp}/b.csv"], ["import", "gsm8k", "--out", "{tmp}/x.csv"],
                                  ["score", "{model}", "--in", "{q}", "--out", "{tmp}/x.csv"],
                                  ["evaluate", "{model}", "{log}", "--report", "{tmp}/r.txt"],
                                  ["evaluate", "{model}", "{log}", "--plot", "{tmp}/r.jpg"],
                                  ["grade", "--in", "{log}", "--summary", "{tmp}/s.yaml"]])
def test_output_extension_must_match_the_format(tmp_path, args):
    model = _fake_model(tmp_path / "model")
    log, q = tmp_path / "a.jsonl", tmp_path / "q.jsonl"
    log.write_text("{}\n")
    q.write_text('{"query": "x"}\n')
    res = _cli(*[a.format(tmp=tmp_path, log=log, model=model, q=q) for a in args])
    assert res.exit_code == 2 and "must end with" in res.output, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "model", "q.jsonl"]


# --------------------------------------------------------------------------------------
# oirl score: .partial, the resume signature, the user's fields, pipes (a real model)


@pytest.fixture(scope="module")
def scoring_setup(tmp_path_factory, make_artifact):
    root = tmp_path_factory.mktemp("score-paths")
    model = make_artifact(root / "model", n_estimators=5, n_prompts=4)
    other = make_artifact(root / "other-model", n_estimators=6, n_prompts=4)
    q = root / "q.jsonl"
    q.write_text("".join(json.dumps({"id": f"q{i}", "query": f"What is {i} plus {i}?", "tag": i}) + "\n"
                         for i in range(30)))
    return model, other, q


@pytest.fixture()
def factory(embedder):
    return lambda cached: embedder


def _interrupted(monkeypatch, after_chunks: int = 1):
    from oirl_fast.scoring import job as score_mod

    real = score_mod.Scoring.score_chunk
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] > after_chunks:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(score_mod.Scoring, "score_chunk", flaky)
    return lambda: monkeypatch.setattr(score_mod.Scoring, "score_chunk", real)


def test_resume_refuses_the_partial_of_another_job(scoring_setup, factory, tmp_path, monkeypatch):
    from oirl_fast.scoring.options import ScoreOptions
    from oirl_fast.scoring.stream import score_file

    model, other, q = scoring_setup
    inp = tmp_path / "q.jsonl"
    inp.write_bytes(q.read_bytes())
    out = tmp_path / "picks.jsonl"
    kw = dict(progress=False, embedder_factory=factory, chunk_size=8)
    restore = _interrupted(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        score_file(model, inp, out, top_k=2, **kw)
    restore()
    partial = tmp_path / "picks.jsonl.partial"
    kept = partial.read_bytes()
    assert len(kept.splitlines()) == 8 and not out.exists()
    job = json.loads((tmp_path / "picks.jsonl.partial.job.json").read_text())
    assert job["options"]["top_k"] == 2 and job["embedder"]["embedding_model"].endswith("all-MiniLM-L6-v2")
    # (this artifact has no calibrator, so --min-confidence cannot be asked for; it is signed all the same)
    assert set(job["options"]) == set(ScoreOptions.signature_fields())
    prompts = tmp_path / "p.jsonl"
    # two prompts: --top-k 2 over one prompt is refused (issue 18), not cut to 1
    prompts.write_text(json.dumps({"id": "z", "text": "Answer briefly."}) + "\n"
                       + json.dumps({"id": "y", "text": "Show your steps."}) + "\n")
    for change, expect in (({"top_k": 1}, "--top-k"), ({"top_k": 2, "with_scores": True}, "--scores"),
                           ({"top_k": 2, "precision": "fp16"}, "--precision"),
                           ({"top_k": 2, "prompts": prompts}, "candidate prompts"),
                           ({"top_k": 2, "model": other}, "model")):
        args = {"model": model, **change}
        with pytest.raises(OirlError, match=f"another job .*{expect}"):
            score_file(args.pop("model"), inp, out, resume=True, **args, **kw)
        assert partial.read_bytes() == kept
    # the input changed (same name, other content): refused too
    inp.write_bytes(q.read_bytes() + b'{"id": "extra", "query": "1 + 1?"}\n')
    with pytest.raises(OirlError, match="another job .*input file"):
        score_file(model, inp, out, resume=True, top_k=2, **kw)
    inp.write_bytes(q.read_bytes())
    os.utime(inp, ns=(job["inputs"][0]["mtime_ns"], job["inputs"][0]["mtime_ns"]))
    # the same job continues, and gives what an uninterrupted run gives
    s = score_file(model, inp, out, resume=True, top_k=2, **kw)
    assert s.resumed == 8 and s.lines == 30 and not partial.exists()
    ref = tmp_path / "ref.jsonl"
    score_file(model, inp, ref, top_k=2, **kw)
    assert out.read_bytes() == ref.read_bytes()


def test_input_fields_named_like_output_fields_become_error_records(scoring_setup, factory, tmp_path):
    from oirl_fast.scoring.records import RESERVED_INPUT_KEYS
    from oirl_fast.scoring.stream import score_file

    model, _, _ = scoring_setup
    inp, out = tmp_path / "q.jsonl", tmp_path / "o.jsonl"
    lines = [{"id": "ok", "query": "2 + 2?", "source": "mine", "prompt_ids": [1]}]
    lines += [{"id": f"clash-{k}", "query": "2 + 2?", k: "user value"} for k in RESERVED_INPUT_KEYS]
    inp.write_text("".join(json.dumps(x) + "\n" for x in lines))
    s = score_file(model, inp, out, progress=False, embedder_factory=factory)
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert recs[0]["source"] == "mine" and recs[0]["prompt_ids"] == [1] and "error" not in recs[0]
    for r, k in zip(recs[1:], RESERVED_INPUT_KEYS):
        assert repr(k) in r["error"] and "rename" in r["error"] and r["id"] == f"clash-{k}"
    assert s.errors == len(RESERVED_INPUT_KEYS) and s.scored == 1
    with pytest.raises(OirlError, match="would be overwritten"):
        score_file(model, inp, tmp_path / "strict.jsonl", strict=True, progress=False, embedder_factory=factory)


def test_score_reads_stdin_and_writes_stdout(scoring_setup, factory, tmp_path, cache_dir):
    from oirl_fast.scoring.stream import score_file

    model, _, q = scoring_setup
    ref = tmp_path / "ref.jsonl"
    score_file(model, q, ref, progress=False, embedder_factory=factory)
    env = {**os.environ, "OIRL_CACHE_DIR": str(cache_dir)}
    cat = subprocess.Popen(["cat", str(q)], stdout=subprocess.PIPE)
    res = subprocess.run([*OIRL, "score", str(model), "--in", "-", "--out", "-", "--device", "cpu"], stdin=cat.stdout,
                         capture_output=True, env=env, timeout=600)
    cat.wait()
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout == ref.read_bytes()  # the picks, and nothing else, on standard output
    assert b"30 lines in <stdout>: 30 scored" in res.stderr
    assert not list(tmp_path.glob("*.partial*"))
    # --resume cannot continue a stream
    res = _cli("score", model, "--in", "-", "--out", "-", "--resume", input=q.read_text())
    assert res.exit_code == 2 and "--resume needs a regular" in res.output


def test_score_reads_a_fifo(scoring_setup, factory, tmp_path):
    from oirl_fast.scoring.stream import score_file

    model, _, q = scoring_setup
    fifo = tmp_path / "q.fifo"
    os.mkfifo(fifo)

    def feed():
        with fifo.open("wb") as fh:
            fh.write(q.read_bytes())

    writer = threading.Thread(target=feed)
    writer.start()
    out = tmp_path / "o.jsonl"
    s = score_file(model, fifo, out, progress=False, embedder_factory=factory)
    writer.join()
    ref = tmp_path / "ref.jsonl"
    score_file(model, q, ref, progress=False, embedder_factory=factory)
    assert s.lines == 30 and out.read_bytes() == ref.read_bytes()


def test_score_into_a_full_device_is_one_line(scoring_setup, tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    model, _, q = scoring_setup
    res = _cli("score", model, "--in", q, "--out", "/dev/full", "--device", "cpu")
    assert res.exit_code == 2 and "No space left" in res.output and "Traceback" not in res.output, res.output
