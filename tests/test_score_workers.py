"""`oirl score --workers`: forked processes share one JSON-lines input; the output is one process's, byte for byte.

The runs are separate `oirl` processes: the pytest process may already run numba's thread pool (earlier
tests), and then it scores alone (a fork would not survive GNU OpenMP), which one test checks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import oirl_fast as oirl
from oirl_fast.scoring import forked
from oirl_fast.scoring.partitions import line_cuts, line_offset

PAD = "x" * 700  # long lines: a few thousand of them pass MIN_SPLIT_BYTES


@pytest.fixture(scope="module")
def static_model(tmp_path_factory, mawps_small, static_cache):
    out = tmp_path_factory.mktemp("workers") / "m"
    oirl.fit(mawps_small, out, n_estimators=5, compile=False, progress=False, cache_dir=static_cache)
    return out


@pytest.fixture(scope="module")
def big_input(tmp_path_factory, mawps_small):
    """Over twice MIN_SPLIT_BYTES of query lines with bad lines of every kind among them, a BOM on line 1, CRLF
    endings, non-ASCII text, and a last line without a newline."""
    questions = sorted(set(mawps_small.column("query").to_pylist()))
    lines, i = [], 0
    while sum(map(len, lines)) < 2 * forked.MIN_SPLIT_BYTES + (1 << 18):  # a resumed half still splits
        q = questions[i % len(questions)]
        kind = i % 97
        if kind == 13:
            lines.append('{"id": "broken", "query": ')  # malformed JSON
        elif kind == 29:
            lines.append("")  # empty line
        elif kind == 41:
            lines.append(json.dumps({"id": f"q{i}", "text": q}))  # no query field
        elif kind == 53:
            lines.append(json.dumps({"id": f"q{i}", "query": "  "}))  # an empty query
        else:
            rec = {"id": f"q{i}", "query": f"{q} ({i} Äpfel)" if i % 5 == 0 else q, "note": PAD}
            lines.append(json.dumps(rec, ensure_ascii=i % 2 == 0))
        i += 1
    text = "\ufeff" + "".join(l + ("\r\n" if j % 7 == 0 else "\n") for j, l in enumerate(lines)).rstrip("\n")
    path = tmp_path_factory.mktemp("workers-in") / "queries.jsonl"
    path.write_bytes(text.encode("utf-8"))
    return path, len(lines)


def oirl_score(model, src, out, cache_dir, *extra, check=True):
    cmd = [sys.executable, "-m", "oirl_fast.cli", "score", str(model), "--in", str(src), "--out", str(out),
           "--cache-dir", str(cache_dir), "--top-k", "2", *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    if check:
        assert res.returncode == 0, res.stderr
    return res


@pytest.fixture(scope="module")
def reference(static_model, big_input, static_cache, tmp_path_factory):
    """The output of one process."""
    out = tmp_path_factory.mktemp("workers-ref") / "one.jsonl"
    res = oirl_score(static_model, big_input[0], out, static_cache, "--workers", "1")
    assert "processes" not in res.stderr
    return out.read_bytes()


def test_workers_write_the_bytes_of_one_process(static_model, big_input, static_cache, reference, tmp_path):
    src, n = big_input
    three = oirl_score(static_model, src, tmp_path / "three.jsonl", static_cache, "--workers", "3")
    assert "in 3 processes" in three.stderr
    data = reference
    assert data == (tmp_path / "three.jsonl").read_bytes()
    recs = [json.loads(l) for l in data.splitlines()]
    assert [r["line"] for r in recs] == list(range(1, n + 1))
    errors = sum("error" in r for r in recs)
    assert 0 < errors < n
    assert f"{n} lines in" in three.stderr and f"{n - errors} scored, {errors} errors" in three.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no part file left beside the output


def test_a_failing_child_fails_the_run_with_one_line_and_a_resume_finishes_it(static_model, big_input, static_cache,
                                                                              reference, tmp_path):
    src, n = big_input
    out = tmp_path / "out.jsonl"
    # the child stops with an OirlError (what a bad input or a failed write is in the product)
    script = (
        "import sys, os\n"
        "from oirl_fast.scoring import forked\n"
        "real = forked._child_main\n"
        "def failing(children, slot, *a):\n"
        "    from oirl_fast.errors import OirlError\n"
        "    import oirl_fast.scoring.stream as st\n"
        "    def boom(*x, **k): raise OirlError('disk full (simulated)', children.src, children.split.ranges[slot].first_line)\n"
        "    st.score_into = boom\n"
        "    return real(children, slot, *a)\n"
        "forked._child_main = failing\n"
        "sys.argv = ['oirl', *sys.argv[1:]]\n"
        "from oirl_fast.cli import main\n"
        "main()\n"
    )
    res = subprocess.run([sys.executable, "-c", script, "score", str(static_model), "--in", str(src), "--out",
                          str(out), "--cache-dir", str(static_cache), "--top-k", "2", "--workers", "2"], capture_output=True,
                         text=True)
    assert res.returncode == 2, res.stderr
    assert "disk full (simulated)" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()
    partial = out.with_name(out.name + ".partial")
    lines = partial.read_bytes().splitlines()
    assert [json.loads(l)["line"] for l in lines] == list(range(1, len(lines) + 1))  # the parent's whole range
    assert 0 < len(lines) < n
    # resumed from within a line of the parent's range: the rest is split again
    os.truncate(partial, len(partial.read_bytes()) // 2)
    again = oirl_score(static_model, src, out, static_cache, "--workers", "3", "--resume")
    assert "resuming after line" in again.stderr and "in 3 processes" in again.stderr
    assert out.read_bytes() == reference


@pytest.mark.parametrize("extra, why", [(["--strict"], "strict"), ([], "small")])
def test_one_process_where_a_split_does_not_pay_or_cannot_be(static_model, static_cache, tmp_path, extra, why):
    src = tmp_path / "q.jsonl"
    src.write_text("".join(json.dumps({"id": i, "query": f"Tom has {i} apples."}) + "\n" for i in range(50)))
    res = oirl_score(static_model, src, tmp_path / "o.jsonl", static_cache, "--workers", "4", *extra)
    assert "processes" not in res.stderr


def test_plan_split_cuts_at_line_starts_after_the_resumed_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(forked, "MIN_SPLIT_BYTES", 0)
    monkeypatch.setattr(forked, "thread_pool_started", lambda: False)
    lines = [f'{{"id": {i}, "query": "{"w" * (i % 13)}"}}\n'.encode() for i in range(1000)]
    src = tmp_path / "q.jsonl"
    src.write_bytes(b"".join(lines))
    starts = [0]
    for l in lines:
        starts.append(starts[-1] + len(l))
    assert line_offset(src, 0) == 0 and line_offset(src, 10) == starts[10] and line_offset(src, 1000) == starts[1000]
    assert line_offset(src, 1001) is None
    for skip, workers in [(0, 2), (0, 3), (137, 4), (990, 8)]:
        split = forked.plan_split(src, skip, workers, strict=False)
        assert split is not None
        assert split.ranges[0].start == starts[skip + split.parent_lines]
        covered = skip + split.parent_lines
        for r in split.ranges:
            assert r.start in starts and r.first_line == covered + 1
            covered += r.lines if r.lines >= 0 else 1000 - covered
            assert r.stop == (starts[covered] if r.lines >= 0 else src.stat().st_size)
        assert covered == 1000
    assert forked.plan_split(src, 0, 2, strict=True) is None
    cuts, before, total = line_cuts(src, 3)
    assert total == 1000 and all(c in starts for c in cuts)


def test_no_fork_once_numba_runs_its_thread_pool(tmp_path, monkeypatch):
    monkeypatch.setattr(forked, "MIN_SPLIT_BYTES", 0)
    src = tmp_path / "q.jsonl"
    src.write_text("".join(f'{{"id": {i}, "query": "q"}}\n' for i in range(100)))
    import numba

    numba.set_num_threads(1)  # starts the pool in this process
    assert forked.thread_pool_started()
    assert forked.plan_split(src, 0, 2, strict=False) is None


def test_a_full_disk_under_a_childs_part_is_one_line(static_model, big_input, static_cache, tmp_path):
    """A write of the child's (unnamed) part file failing for want of space: one line naming the output, exit 2."""
    src, _ = big_input
    out = tmp_path / "out.jsonl"
    script = (
        "import errno, os, sys\n"
        "import oirl_fast.scoring.stream as st\n"
        "real = st.score_into\n"
        "def full(scoring, items, fh, *a, **k):\n"
        "    if os.getpid() != PARENT:\n"
        "        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "    return real(scoring, items, fh, *a, **k)\n"
        "PARENT = os.getpid()\n"
        "st.score_into = full\n"
        "sys.argv = ['oirl', *sys.argv[1:]]\n"
        "from oirl_fast.cli import main\n"
        "main()\n"
    )
    res = subprocess.run([sys.executable, "-c", script, "score", str(static_model), "--in", str(src), "--out",
                          str(out), "--cache-dir", str(static_cache), "--workers", "2"], capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert f"{out}: cannot write (No space left on device)" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
