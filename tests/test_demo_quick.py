"""`oirl demo --quick` and the forest plot of the gains over the best single prompt."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from oirl_fast.cli import app
from oirl_fast.gain_plot import gain_rows, plot_gains


def _summary():
    """A summary of the demo's shape; every gain is derived below from its own fields."""
    per = {"n_train_prompts": 6, "n_all_prompts": 16, "best_single": 0.60, "best_of_n": 0.63,
           "best_of_n_diff_ci": [0.01, 0.05], "n_test_queries": 400, "best_single_all_prompts": 0.58,
           "best_of_n_all_prompts": 0.57, "best_of_n_all_prompts_diff_ci": [-0.03, 0.01],
           "n_test_queries_all_prompts": 300}
    crossfit = {"n_prompts": 6, "n_questions": 1000, "best_single": 0.5, "rerank": 0.502, "rerank_diff_ci": [0.0, 0.004],
                "default_model": 0.49, "default_model_diff_ci": [-0.02, 0.0]}
    tradeoff = {"n_queries": 1000, "policies": {
        "reward model": {"calls_per_query": 1.0, "accuracy": 0.253, "reference_accuracy": 0.247, "ci95": [-0.015, 0.026]},
        "vote 3 (reward model)": {"calls_per_query": 3.0, "accuracy": 0.281, "reference_accuracy": 0.264,
                                  "ci95": [0.003, 0.030]}}}
    return {"mawps": {"grouped": per}, "crossfit": {"mawps": crossfit, "svamp": crossfit},
            "transfer": {"mawps": {**per, "trained_on": ["svamp"]}, "svamp": {"skipped": "no rows", "trained_on": []}},
            "tradeoff": {"gsm8k": tradeoff}}


def test_gain_rows_are_the_summary_differences_in_points():
    rows = gain_rows(_summary())
    got = [(r.dataset, r.split, r.policy, round(r.gain, 6), tuple(round(c, 6) for c in r.ci), r.n) for r in rows]
    assert got == [
        ("mawps", "grouped", "best of 6", 3.0, (1.0, 5.0), 400),
        ("mawps", "grouped", "best of 16", -1.0, (-3.0, 1.0), 300),
        ("mawps", "transfer", "best of 6", 3.0, (1.0, 5.0), 400),
        ("mawps", "transfer", "best of 16", -1.0, (-3.0, 1.0), 300),
        ("mawps", "cross-fitted", "re-rank, near-duplicate vote (6)", 0.2, (0.0, 0.4), 1000),
        ("mawps", "cross-fitted", "re-rank, default model (6)", -1.0, (-2.0, 0.0), 1000),
        # a dataset in the crossfit section only; a skipped transfer gives no row
        ("svamp", "cross-fitted", "re-rank, near-duplicate vote (6)", 0.2, (0.0, 0.4), 1000),
        ("svamp", "cross-fitted", "re-rank, default model (6)", -1.0, (-2.0, 0.0), 1000),
        # answer policies, each against the fixed prompts of as many LLM calls
        ("gsm8k", "answers", "reward model vs best single", 0.6, (-1.5, 2.6), 1000),
        ("gsm8k", "answers", "vote 3 (reward model) vs fixed vote 3", 1.7, (0.3, 3.0), 1000),
    ]
    assert gain_rows({}) == []


def test_plot_gains_writes_a_png(tmp_path):
    path = plot_gains(_summary(), tmp_path / "gains.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no gain"):
        plot_gains({}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


@pytest.mark.slow
def test_quick_demo_runs_every_step_and_says_where_the_outputs_are(tmp_path, static_cache):
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--quick", "--dataset", "mawps", "--no-compile", "--out", str(out), "--json",
                                   "--cache-dir", str(static_cache)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert set(summary) == {"mawps", "crossfit"} and set(summary["mawps"]) == {"grouped"}
    assert json.loads((out / "summary.json").read_text()) == summary
    s, cf = summary["mawps"]["grouped"], summary["crossfit"]["mawps"]
    assert s["seeds"] == 1 and cf["n_questions"] == 1744  # one seed; every question re-ranked once
    assert (out / "mawps" / "model" / "embedder" / "settings.json").is_file()  # the model carries its embedder
    queries = [json.loads(x) for x in (out / "mawps" / "queries.jsonl").read_text().splitlines()]
    picks = [json.loads(x) for x in (out / "mawps" / "picks.jsonl").read_text().splitlines()]
    assert len(queries) == len(picks) == 200 and [p["id"] for p in picks] == [q["id"] for q in queries]
    prompts = {p["id"] for p in json.loads((out / "mawps" / "model" / "metadata.json").read_text())["prompts"]}
    assert all(p["prompt_id"] in prompts for p in picks)
    assert (out / "gains.png").read_bytes()[:4] == b"\x89PNG"
    assert len(gain_rows(summary)) == 6  # best of 6 and 16; the re-rank, its vote and default model, over 6 and 16
    lines = res.stderr.splitlines()
    for where in (out / "mawps" / "logs.parquet", out / "mawps" / "model", out / "mawps" / "report-grouped.json",
                  out / "crossfit" / "mawps", out / "mawps" / "picks.jsonl", out / "gains.png", out / "summary.json"):
        assert any(line.endswith(f": {where}") for line in lines), where  # one line each, the whole path
    assert any(line.startswith(f"$ oirl score {out / 'mawps' / 'model'} --in ") for line in lines)
