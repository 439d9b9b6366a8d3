"""The `oirl` CLI end to end on a small real subset, and its handling of bad input."""
import gzip
import json
import shutil

import pytest
from typer.testing import CliRunner

from oirl_fast.cli import app
from oirl_fast.collect.published import bundled_source
from oirl_fast.schema import write_logs

runner = CliRunner()


def run(*args, cache_dir=None):
    extra = ["--cache-dir", str(cache_dir)] if cache_dir else []
    return runner.invoke(app, [*args, *extra], catch_exceptions=False)


@pytest.fixture(scope="module")
def small_log(tmp_path_factory, mawps_small):
    path = tmp_path_factory.mktemp("logs") / "mawps-small.parquet"
    write_logs(mawps_small, path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_log, static_cache):
    cache_dir = static_cache
    out = tmp_path_factory.mktemp("models") / "model"
    res = run("train", str(small_log), "--out", str(out), "--protocol", "grouped", "--n-estimators", "40",
              cache_dir=cache_dir)
    assert res.exit_code == 0, res.output
    return out


def test_train_writes_self_describing_artifact(trained):
    meta = json.loads((trained / "metadata.json").read_text())
    # the default embedder: static, recorded with its build's weights hash
    from oirl_fast.encoders import StaticEncoder

    assert meta["embedding_model"] == StaticEncoder.name
    assert meta["embedder"]["kind"] == "static" and len(meta["embedder"]["weights_sha256"]) == 64
    assert meta["feature_layout"] == {"query_dim": 256, "prompt_dim": 256, "kind": "concat"}
    assert [p["id"] for p in meta["prompts"] if p["seen_in_training"]] == ["nan", "CoT", "APE", "Dis", "ToT", "Decomp"]
    assert len(meta["prompts"]) == 16
    assert meta["protocol"]["name"] == "grouped"
    assert (trained / "model.lgb.txt").is_file()
    manifest = json.loads((trained / "manifest.json").read_text())
    assert (trained / manifest["compiled_library"]["file"]).is_file()
    assert not [p for p in trained.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_evaluate_reports_table_json_and_plot(trained, small_log, cache_dir, tmp_path):
    report, plot = tmp_path / "report.json", tmp_path / "plot.png"
    res = run("evaluate", str(trained), str(small_log), "--report", str(report), "--plot", str(plot), "--json",
              cache_dir=cache_dir)
    assert res.exit_code == 0, res.output
    summ = json.loads(res.stdout)["mawps"]["grouped"]
    for key in ("best_single", "best_of_n", "best_of_n_all_prompts", "oracle", "critic", "knn", "random", "auc",
                "n_test_queries", "test_in_train"):
        assert key in summ
    assert summ["test_in_train"] == 0  # grouped: no test question in training
    assert summ["seeds"] == 5 and summ["best_of_n_seed_std"] >= 0.0
    lo, hi = summ["best_of_n_diff_ci"]
    assert lo <= summ["best_of_n"] - summ["best_single"] <= hi
    assert summ["n_test_queries"] == 75  # 25% of the 300 questions
    for key in ("best_single", "best_of_n", "best_of_n_all_prompts", "critic", "knn", "random"):
        assert 0.0 <= summ[key] <= summ["oracle_all_prompts" if key.endswith("_all_prompts") else "oracle"] + 1e-12
    full = json.loads(report.read_text())
    assert set(full["classification"]) == {"train_prompts", "heldout_prompts"}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = run("evaluate", str(trained), str(small_log), cache_dir=cache_dir)
    assert "best single prompt" in table.stdout and "oracle" in table.stdout


def test_import_writes_log(tmp_path):
    out = tmp_path / "mawps.jsonl"
    res = run("import", "mawps", "--out", str(out))
    assert res.exit_code == 0, res.output
    with out.open() as fh:
        first = json.loads(fh.readline())
    assert first["dataset"] == "mawps" and "number0" not in first["query"]


def _bad_source(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(bundled_source(), src)
    return src


def test_import_truncated_log_is_a_clean_error(tmp_path):
    src = _bad_source(tmp_path)
    f = src / "prompt_oirl_llama2/corr/mawps/llama_mawps_corr_CoT.txt.gz"
    lines = gzip.decompress(f.read_bytes()).splitlines(keepends=True)
    f.write_bytes(gzip.compress(b"".join(lines[:-1])))
    out = tmp_path / "out.parquet"
    res = run("import", "mawps", "--source", str(src), "--out", str(out))
    assert res.exit_code == 2
    assert "llama_mawps_corr_CoT.txt" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_import_csv_with_wrong_column(tmp_path):
    src = _bad_source(tmp_path)
    f = src / "svamp/fold2_train.csv.gz"
    text = gzip.decompress(f.read_bytes()).decode()
    f.write_bytes(gzip.compress(text.replace("Numbers", "Nums", 1).encode()))
    res = run("import", "svamp", "--source", str(src), "--out", str(tmp_path / "o.parquet"))
    assert res.exit_code == 2 and "fold2_train.csv" in res.stderr


def test_missing_log_file(tmp_path):
    res = run("train", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "m"))
    assert res.exit_code == 2 and "nope.parquet" in res.stderr
    assert not (tmp_path / "m").exists()


def test_artifact_for_another_embedding_model_is_refused(trained, small_log, cache_dir, tmp_path, reseal):
    other = tmp_path / "other"
    shutil.copytree(trained, other)
    meta = json.loads((other / "metadata.json").read_text())
    meta["embedding_model"] = "openai/text-embedding-ada-002"
    (other / "metadata.json").write_text(json.dumps(meta))
    reseal(other)
    res = run("evaluate", str(other), str(small_log), cache_dir=cache_dir)
    assert res.exit_code == 2
    assert "metadata.json" in res.stderr and "text-embedding-ada-002" in res.stderr


def test_artifact_for_another_prompt_set_is_refused(trained, mawps_small, cache_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.compute as pc

    fewer = mawps_small.filter(pc.invert(pc.is_in(mawps_small.column("prompt_id"), pa.array(["gpt4_9"]))))
    log = tmp_path / "fewer.parquet"
    write_logs(fewer, log)
    res = run("evaluate", str(trained), str(log), cache_dir=cache_dir)
    assert res.exit_code == 2 and "prompt set" in res.stderr

    # same ids, one prompt worded differently: the model's prompt embeddings would not match the log
    prompts = pc.if_else(pc.equal(mawps_small.column("prompt_id"), "gpt4_9"), "Reworded prompt.", mawps_small.column("prompt"))
    reworded = mawps_small.set_column(mawps_small.schema.get_field_index("prompt"), "prompt", prompts)
    write_logs(reworded, log)
    res = run("evaluate", str(trained), str(log), cache_dir=cache_dir)
    assert res.exit_code == 2 and "text of prompt(s) ['gpt4_9']" in res.stderr


def test_tampered_prompt_embeddings_are_refused(trained, small_log, cache_dir, tmp_path):
    import numpy as np

    other = tmp_path / "tampered"
    shutil.copytree(trained, other)
    emb = np.load(other / "prompt_embeddings.npy")
    np.save(other / "prompt_embeddings.npy", emb[::-1].copy())
    res = run("evaluate", str(other), str(small_log), cache_dir=cache_dir)
    assert res.exit_code == 2 and "prompt_embeddings.npy" in res.stderr


def test_help_explains_commands():
    res = run("--help")
    for cmd in ("import", "embed", "train", "evaluate", "demo"):
        assert cmd in res.stdout


def test_xgboost_backend_end_to_end(small_log, cache_dir, tmp_path):
    out = tmp_path / "xgb"
    res = run("train", str(small_log), "--out", str(out), "--backend", "xgboost", "--n-estimators", "30",
              "--protocol", "published", cache_dir=cache_dir)
    assert res.exit_code == 0, res.output
    assert (out / "model.xgb.json").is_file() and (out / "compiled" / "model.so").is_file()
    res = run("evaluate", str(out), str(small_log), "--json", cache_dir=cache_dir)
    assert res.exit_code == 0, res.output
    summ = json.loads(res.stdout)["mawps"]["published"]
    # the published split leaks: every test question of this subset is also a training question
    assert summ["test_in_train"] == summ["n_test_queries"] > 0


def test_metadata_records_validation_metrics(trained):
    val = json.loads((trained / "metadata.json").read_text())["metrics"]["validation"]
    assert val["n_cells"] > 0 and 0.0 < val["log_loss"] < 1.0 and 0.0 <= val["auc"] <= 1.0


def test_demo_json_on_one_dataset(tmp_path, static_cache):
    res = run("demo", "--dataset", "mawps", "--protocol", "grouped", "--seeds", "2", "--no-compile",
              "--out", str(tmp_path / "demo"), "--json", cache_dir=static_cache)
    assert res.exit_code == 0, res.output
    assert "transfer" not in json.loads(res.stdout)  # one dataset: nothing to transfer from
    s = json.loads(res.stdout)["mawps"]["grouped"]
    assert s["embedder"] == "static"
    for key in ("best_single", "best_of_n", "best_of_n_all_prompts", "oracle", "critic", "knn", "random", "auc",
                "n_test_queries", "test_in_train", "best_of_n_diff_ci", "best_of_n_all_prompts_diff_ci", "seeds"):
        assert key in s
    assert s["seeds"] == 2 and s["test_in_train"] == 0
    lo, hi = s["best_of_n_diff_ci"]
    assert lo <= s["best_of_n"] - s["best_single"] <= hi
    assert (tmp_path / "demo" / "mawps" / "model" / "metadata.json").is_file()
    assert (tmp_path / "demo" / "summary.png").is_file() and (tmp_path / "demo" / "gains.png").is_file()
    # the cross-fitted section: every MAWPS question tested once, by models that never saw it
    cf = json.loads(res.stdout)["crossfit"]["mawps"]
    assert cf["n_questions"] == 1744 and cf["n_prompts"] == 6 and cf["n_prompts_all_prompts"] == 16
    for key in ("rerank", "rerank_all_prompts", "best_single", "default_model"):
        assert cf["random"] <= cf[key] <= cf["oracle"] if "all" not in key else cf[key] <= cf["oracle_all_prompts"]
    lo, hi = cf["rerank_diff_ci"]
    assert lo - 1e-9 <= cf["rerank"] - cf["best_single"] <= hi + 1e-9
    assert set(cf["candidates"]) == {"pointwise", "ranking", "knn", "blend"}
    assert cf["ceiling"]["ceiling"] > 0
    picks = (tmp_path / "demo" / "crossfit" / "mawps" / "picks.jsonl").read_text().splitlines()
    assert len(picks) == 1744
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["crossfit"]["mawps"] == cf


def test_demo_reports_headroom_for_repeated_questions(tmp_path, cache_dir):
    res = run("demo", "--dataset", "mawps", "--protocol", "grouped", "--seeds", "1", "--no-compile", "--no-crossfit",
              "--out", str(tmp_path / "demo"), "--json", cache_dir=cache_dir)
    h = json.loads(res.stdout)["mawps"]["grouped"]["headroom"]
    assert set(h) == {"ceiling", "best_single", "captured_share"}
    assert 0.0 < h["best_single"] < 1.0 and 0.0 < h["ceiling"] <= 1.0
    assert "known-question ceiling" in res.stderr
    assert "train [grouped]" in res.stderr and "evaluate [grouped]:" in res.stderr  # rich markup kept the labels


def test_demo_transfer_section(tmp_path, static_cache):
    res = run("demo", "--dataset", "mawps", "--dataset", "svamp", "--protocol", "grouped", "--seeds", "1",
              "--no-compile", "--no-crossfit", "--out", str(tmp_path / "demo"), "--json", cache_dir=static_cache)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    transfer = out["transfer"]
    assert set(transfer) == {"mawps", "svamp"}
    # every MAWPS question is also a SVAMP question: held-out SVAMP leaves no MAWPS row to train on
    skipped = transfer["svamp"]
    assert "no training rows remain" in skipped["skipped"] and skipped["trained_on"] == ["mawps"]
    leak = skipped["cross_dataset_leakage"]
    assert 0 < leak["in_training_datasets"] <= leak["heldout_questions"] and leak["dropped_rows"] > 0
    for ds, other in (("mawps", "svamp"),):
        s = transfer[ds]
        assert s["trained_on"] == [other]
        for key in ("best_of_n", "best_of_n_all_prompts", "best_single", "best_single_all_prompts",
                    "best_of_n_diff_ci", "best_of_n_all_prompts_diff_ci", "n_test_queries",
                    "n_test_queries_all_prompts"):
            assert s[key] is not None, key
        assert s["n_all_prompts"] > s["n_train_prompts"] >= 2  # the prompt counts are fields, not key suffixes
        for key, ci in (("best_of_n", "best_of_n_diff_ci"), ("best_of_n_all_prompts", "best_of_n_all_prompts_diff_ci")):
            lo, hi = s[ci]
            base = s["best_single"] if key == "best_of_n" else s["best_single_all_prompts"]
            assert lo - 1e-9 <= s[key] - base <= hi + 1e-9
        leak = s["cross_dataset_leakage"]
        # MAWPS and SVAMP share questions: they are counted, dropped from training, and none is left in it
        assert 0 < leak["in_training_datasets"] <= leak["heldout_questions"] and leak["dropped_rows"] > 0
        assert leak["by_dataset"] == {other: leak["in_training_datasets"]}
        assert s["test_in_train"] == 0 and s["test_in_train_by_dataset"] == {other: 0}
        assert s["n_test_queries"] == leak["heldout_questions"]  # tested on every question of the dataset
        assert (tmp_path / "demo" / "transfer" / ds / "model" / "metadata.json").is_file()
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["transfer"] == transfer
    assert "Transfer" in res.stderr


def test_score_min_confidence_flags_low_calibrated_picks(trained, mawps_small, cache_dir, tmp_path, reseal):
    queries = sorted(set(mawps_small.column("query").to_pylist()))[:40]
    inp = tmp_path / "q.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "query": q}) + "\n" for i, q in enumerate(queries)))
    out = tmp_path / "picks.jsonl"
    res = run("score", str(trained), "--in", str(inp), "--out", str(out), "--min-confidence", "0.6",
              cache_dir=cache_dir)
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 40
    for r in recs:
        assert 0.0 <= r["confidence"] <= 1.0 and r["low_confidence"] == (r["confidence"] < 0.6)
    by_score = sorted(recs, key=lambda r: r["score"])
    assert all(a["confidence"] <= b["confidence"] for a, b in zip(by_score, by_score[1:]))  # monotone calibrator

    old = tmp_path / "old-model"
    shutil.copytree(trained, old)
    meta = json.loads((old / "metadata.json").read_text())
    meta["calibration"] = None
    (old / "metadata.json").write_text(json.dumps(meta))
    reseal(old)
    res = run("score", str(old), "--in", str(inp), "--out", str(tmp_path / "o2.jsonl"), "--min-confidence", "0.6",
              cache_dir=cache_dir)
    assert res.exit_code == 2 and "no calibrator" in res.stderr


def test_evaluate_reports_calibration_and_reliability_plot(trained, small_log, cache_dir, tmp_path):
    rel = tmp_path / "rel.png"
    res = run("evaluate", str(trained), str(small_log), "--json", "--reliability-plot", str(rel), cache_dir=cache_dir)
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)["mawps"]["grouped"]
    assert 0.0 <= s["ece"] <= 1.0 and 0.0 <= s["ece_calibrated"] <= 1.0
    assert rel.read_bytes()[:4] == b"\x89PNG"


def test_evaluate_says_why_headroom_is_missing(tmp_path, mawps_small, cache_dir):
    # the published protocol scores single rows, not questions with their repeats pooled
    log = tmp_path / "log.parquet"
    write_logs(mawps_small, log)
    out = tmp_path / "m"
    assert run("train", str(log), "--out", str(out), "--protocol", "published", "--n-estimators", "10",
               "--no-compile", cache_dir=cache_dir).exit_code == 0
    res = run("evaluate", str(out), str(log), "--seeds", "1", "--json", cache_dir=cache_dir)
    assert res.exit_code == 0 and "headroom not measured" in res.stderr
    assert json.loads(res.stdout)["mawps"]["published"]["headroom"] is None


def test_cli_modules_import_no_circle():
    """cli_common is imported by the command modules and imports none of them; cli_score and
    cli_collect never import cli (it imports them to register their commands)."""
    import ast
    from pathlib import Path

    import oirl_fast

    root = Path(oirl_fast.__file__).parent

    def imported(name: str) -> set[str]:
        tree = ast.parse((root / f"{name}.py").read_text())
        out = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                out.add(node.module or "")
                out.update(a.name for a in node.names if node.module is None)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("oirl_fast."):
                out.add(node.module.split(".", 1)[1])
        return out

    cli_modules = {"cli", "cli_score", "cli_collect", "cli_common"}
    assert not imported("cli_common") & cli_modules
    for name in ("cli_score", "cli_collect"):
        assert not imported(name) & (cli_modules - {"cli_common"}), name
    assert {"cli_score", "cli_collect", "cli_common"} <= imported("cli")
