"""oirl rerank / oirl.rerank: cross-fitted picks of every logged question, the report, abstention."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from oirl_fast.cli import app
from oirl_fast.reranking.folds import assign_folds, build_units
from oirl_fast.reranking.selection import choose_margin, predicted_gain, ranked
from oirl_fast.schema import write_logs

runner = CliRunner()


@pytest.fixture(scope="module")
def mawps_file(tmp_path_factory, mawps_log):
    path = tmp_path_factory.mktemp("rerank") / "mawps.parquet"
    write_logs(mawps_log, path)
    return path


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, mawps_file, static_cache):
    """`oirl rerank` on the whole bundled MAWPS log (kNN candidate only, to stay fast)."""
    out = tmp_path_factory.mktemp("rerank-out")
    args = ["rerank", str(mawps_file), "--folds", "5", "--out", str(out / "picks.jsonl"), "--candidate", "knn",
            "--report-json", str(out / "report.json"), "--plot", str(out / "report.png"), "--cache-dir", str(static_cache)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return out, args


def _pooled_outcome(log: pa.Table):
    """{(dataset, group, prompt_id): success rate over the question's rows}, straight from the log."""
    keys = zip(log.column("dataset").to_pylist(), log.column("group").to_pylist(), log.column("prompt_id").to_pylist())
    wins, n = {}, {}
    for key, c in zip(keys, log.column("correct").to_pylist()):
        wins[key] = wins.get(key, 0) + int(c)
        n[key] = n.get(key, 0) + 1
    return {k: wins[k] / n[k] for k in n}


def test_one_line_per_question_and_accuracy_recomputed_from_the_log(cli_run, mawps_log):
    out, _ = cli_run
    lines = [json.loads(x) for x in (out / "picks.jsonl").read_text().splitlines()]
    n_questions = len(pc.unique(mawps_log.column("group")))
    assert len(lines) == n_questions == 1744
    assert len({(r["dataset"], r["group"]) for r in lines}) == len(lines)
    assert {r["fold"] for r in lines} == set(range(5))
    report = json.loads((out / "report.json").read_text())
    rate = _pooled_outcome(mawps_log)
    for label, suffix in (("n_train_prompts", ""), ("n_all_prompts", "_all")):
        fig = report["datasets"]["mawps"][label]
        prompts = None
        # the questions scored: those logged with every prompt of the set
        logged = {}
        for (ds, g, p) in rate:
            logged.setdefault(g, set()).add(p)
        n_set = fig["n_prompts"]
        scored = [r for r in lines if len(logged[r["group"]]) >= n_set]
        assert len(scored) == fig["n_questions"]
        policy = np.mean([rate[("mawps", r["group"], r[f"pick{suffix}"]["prompt_id"])] for r in scored])
        model = np.mean([rate[("mawps", r["group"], r[f"top_k{suffix}"][0]["prompt_id"])] for r in scored])
        fixed = np.mean([rate[("mawps", r["group"], r[f"best_single{suffix}"])] for r in scored])
        assert policy == pytest.approx(fig["per_seed"]["rerank"][0], abs=1e-12)
        assert model == pytest.approx(fig["per_seed"]["default_model"][0], abs=1e-12)
        assert fixed == pytest.approx(fig["per_seed"]["best_single"][0], abs=1e-12)
        for r in scored[:50]:  # each listed outcome is the log's
            for pick in r[f"top_k{suffix}"]:
                assert pick["outcome"] == pytest.approx(rate[("mawps", r["group"], pick["prompt_id"])])
            scores = [p["score"] for p in r[f"top_k{suffix}"]]
            assert scores == sorted(scores, reverse=True)
    assert (out / "report.png").stat().st_size > 0
    assert report["datasets"]["mawps"]["n_train_prompts"]["ceiling"]["ceiling"] > 0


def test_same_seed_same_picks(cli_run, tmp_path):
    out, args = cli_run
    again = [a if a != str(out / "picks.jsonl") else str(tmp_path / "again.jsonl") for a in args]
    again = again[: again.index("--report-json")] + again[again.index("--cache-dir"):]
    res = runner.invoke(app, again)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "again.jsonl").read_text() == (out / "picks.jsonl").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--folds", "1"], "folds must be an integer >= 2"),
    (["--candidate", "magic"], "unknown candidate"),
    (["--candidate", "knn", "--candidate", "blend"], "blend candidate needs two"),
    (["--inner-folds", "5"], "inner_folds must be at most"),
])
def test_bad_options_one_line_exit_2(mawps_file, tmp_path, extra, message):
    res = runner.invoke(app, ["rerank", str(mawps_file), "--out", str(tmp_path / "p.jsonl"), *extra])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "p.jsonl").exists()


def test_bad_inputs_exit_2(tmp_path, mawps_file):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "x"\n')
    res = runner.invoke(app, ["rerank", str(bad), "--out", str(tmp_path / "p.jsonl")])
    assert res.exit_code == 2 and "bad.jsonl" in res.output
    res = runner.invoke(app, ["rerank", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "p.jsonl")])
    assert res.exit_code == 2 and "missing.parquet" in res.output
    res = runner.invoke(app, ["rerank", str(mawps_file), "--out", str(mawps_file)])  # output onto the input
    assert res.exit_code == 2
    assert mawps_file.stat().st_size > 0


def test_every_candidate_on_a_subset(mawps_small, embedder):
    """All four candidates cross-fitted in the same folds on 300 MAWPS questions."""
    import oirl_fast as oirl

    res = oirl.rerank(mawps_small, folds=3, inner_folds=1, fast=True, embedder=embedder, progress=False)
    fig = res.report["datasets"]["mawps"]["n_train_prompts"]
    assert set(fig["accuracy"]) >= {"rerank", "default_model", "pointwise", "ranking", "knn", "blend",
                                    "best_single", "random", "oracle"}
    assert fig["accuracy"]["random"] <= fig["accuracy"]["best_single"] <= fig["accuracy"]["oracle"]
    for name in ("pointwise", "ranking", "knn", "blend", "default_model", "rerank"):
        assert fig["accuracy"]["random"] - 0.1 <= fig["accuracy"][name] <= fig["accuracy"]["oracle"]
    assert len(res.records()) == 300
    # the fold's default model is one of the candidates, chosen per fold
    assert set(fig["default_models"]) <= {"pointwise", "ranking", "knn", "blend"}
    assert sum(fig["default_models"].values()) == 3


def test_folds_keep_groups_together_and_balanced():
    groups = np.array(["a", "a", "b", "c", "c", "c", "d", "e", "f", "g"], dtype=object)
    f = assign_folds(groups, 3, seed=0)
    for g in np.unique(groups):
        assert len(set(f[groups == g])) == 1
    sizes = np.bincount([f[groups == g][0] for g in np.unique(groups)])
    assert sizes.max() - sizes.min() <= 1
    many = np.array([f"q{i}" for i in range(100)], dtype=object)
    assert (assign_folds(many, 3, seed=0) != assign_folds(many, 3, seed=1)).any()
    assert (assign_folds(many, 3, seed=0) == assign_folds(many, 3, seed=0)).all()


def test_units_group_across_datasets(mawps_log):
    """A question in two datasets is two units with one group: always in one fold."""
    keep = pc.unique(mawps_log.column("group")).to_pylist()[:40]
    sub = mawps_log.filter(pc.is_in(mawps_log.column("group"), pa.array(keep)))
    i_ds, i_q = sub.schema.get_field_index("dataset"), sub.schema.get_field_index("query_id")
    other = sub.set_column(i_ds, sub.schema.field(i_ds), pa.array(["svamp"] * sub.num_rows, pa.string()))
    other = other.set_column(i_q, sub.schema.field(i_q), pa.array([f"s{i}" for i in range(sub.num_rows)], pa.string()))
    units = build_units(pa.concat_tables([sub, other]))
    assert units.n_units == 2 * len(pc.unique(sub.column("group")))
    f = assign_folds(units.groups, 2, 0)
    for g in np.unique(units.groups):
        assert len(set(f[units.groups == g])) == 1


def test_ranked_breaks_ties_at_random_and_puts_nan_last():
    scores = np.array([[1.0, 1.0, np.nan, 0.5]] * 400)
    order = ranked(scores, np.random.default_rng(0))
    assert set(order[:, 0]) == {0, 1}
    assert 0.4 < (order[:, 0] == 0).mean() < 0.6
    assert (order[:, -1] == 2).all()


# -- abstention -------------------------------------------------------------------------------------------

def _synthetic(signal: bool, n=4000, seed=0):
    """Two prompts; prompt 1 is better on half the questions (x > 0) and worse elsewhere; the fixed prompt 0.
    With ``signal`` the predicted gain follows x; without, it is noise independent of the outcomes."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    p1 = np.where(x > 0, 0.8, 0.3)
    outcome = np.stack([rng.random(n) < 0.55, rng.random(n) < p1], axis=1).astype(float)
    gain = x if signal else rng.normal(size=n)
    top = np.where(gain > 0, 1, 0)
    return gain * (top == 1), outcome, top


@pytest.mark.parametrize("seed", range(5))
def test_no_signal_falls_back_everywhere(seed):
    gain, outcome, top = _synthetic(signal=False, seed=seed)
    m = choose_margin(gain, outcome[np.arange(len(top)), top], outcome[:, 0])
    assert m["margin"] == float("inf")
    assert not (gain > m["margin"]).any()


@pytest.mark.parametrize("seed", range(5))
def test_signal_switches(seed):
    gain, outcome, top = _synthetic(signal=True, seed=seed)
    m = choose_margin(gain, outcome[np.arange(len(top)), top], outcome[:, 0])
    assert np.isfinite(m["margin"]) and m["inner_gain"] > 0
    assert 0.2 < (gain > m["margin"]).mean() < 0.6  # about the half where prompt 1 is better


def test_predicted_gain_is_zero_when_the_fixed_prompt_is_the_top():
    scores = np.array([[0.9, 0.1], [0.2, 0.7]])
    g = predicted_gain(scores, np.array([0, 1]), np.array([0, 0]))
    assert g[0] == 0 and g[1] == pytest.approx(0.5)


def test_ranking_model_is_scored_by_the_kernel_and_compiles(tmp_path):
    """The ranking candidate keeps the [query ‖ prompt] split: the factorized kernel scores it exactly like
    LightGBM, and treelite + tl2cgen compile it (raw scores: rank_xendcg has no sigmoid)."""
    import tl2cgen

    from oirl_fast.features import grid_features
    from oirl_fast.kernels.quickscorer import FactorizedScorer
    from oirl_fast.reranking.candidates import RankingModel
    from oirl_fast.train.model_format import read_treelite
    from oirl_fast.train.reward_model import TrainConfig

    rng = np.random.default_rng(0)
    U, P, dq, dp = 300, 4, 8, 6
    q = rng.normal(size=(U, dq)).astype(np.float32)
    p = rng.normal(size=(P, dp)).astype(np.float32)
    # prompt j wins where query feature j is the largest of the first four
    rate = (np.argmax(q[:, :P], axis=1)[:, None] == np.arange(P)[None, :]).astype(float)
    count = np.ones((U, P), np.int64)
    cfg = TrainConfig(n_estimators=30, num_leaves=15, min_child_weight=5, early_stopping_rounds=30, nthread=1)
    model = RankingModel(cfg).fit(q, p, rate, count, np.arange(U).astype(str), np.arange(P))
    native = model.predict(grid_features(q, p)).reshape(U, P)
    assert (np.argmax(native, axis=1) == np.argmax(rate, axis=1)).mean() > 0.8  # it learned the rule
    kernel = FactorizedScorer.from_booster(model.booster, dq, dp)
    np.testing.assert_allclose(kernel.score(q, p), native, rtol=1e-6, atol=1e-9)
    path = tmp_path / "rank.lgb.txt"
    model.booster.save_model(str(path))
    tl2cgen.export_lib(read_treelite(path, "lightgbm"), toolchain="gcc", libpath=str(tmp_path / "rank.so"))
    compiled = tl2cgen.Predictor(str(tmp_path / "rank.so")).predict(tl2cgen.DMatrix(grid_features(q, p)))
    np.testing.assert_allclose(np.asarray(compiled).reshape(U, P), native, rtol=1e-5, atol=1e-6)


def test_several_seeds_give_mean_and_spread(mawps_small, embedder):
    import oirl_fast as oirl

    one = oirl.rerank(mawps_small, folds=3, candidates=["knn"], inner_folds=1, embedder=embedder, progress=False)
    two = oirl.rerank(mawps_small, folds=3, candidates=["knn"], inner_folds=1, seeds=2, embedder=embedder,
                      progress=False)
    fig1 = one.report["datasets"]["mawps"]["n_train_prompts"]
    fig2 = two.report["datasets"]["mawps"]["n_train_prompts"]
    assert len(fig2["per_seed"]["knn"]) == 2 and fig2["accuracy_sd"]["knn"] is not None
    assert fig2["per_seed"]["knn"][0] == fig1["per_seed"]["knn"][0]  # seed 0 is seed 0 either way
    assert fig2["accuracy"]["knn"] == pytest.approx(np.mean(fig2["per_seed"]["knn"]))
    assert two.records() == one.records()  # the picks are the first seed's


def test_results_tables_prints_the_crossfit_table(cli_run):
    import subprocess
    import sys
    from pathlib import Path

    out, _ = cli_run
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "results_tables.py"
    res = subprocess.run([sys.executable, str(script), str(out / "report.json")], capture_output=True, text=True,
                         check=True)
    report = json.loads((out / "report.json").read_text())
    fig = report["datasets"]["mawps"]["n_train_prompts"]
    row = next(line for line in res.stdout.splitlines() if line.startswith("| rerank: default policy (near-duplicate vote), best of 6"))
    assert f"{fig['accuracy']['rerank']:.3f}" in row and f"{fig['near_share']:.0%} with a near-duplicate" in row
    ceiling = next(line for line in res.stdout.splitlines() if line.startswith("| repeat-based ceiling"))
    assert f"({fig['ceiling']['captured_share']:.0%} captured)" in ceiling
    assert "| questions (best of 6) | 1,744 |" in res.stdout
