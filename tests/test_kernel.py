"""The factorized QuickScorer kernel against the native boosters, on real GSM8K pairs."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from oirl_fast.errors import OirlError
from oirl_fast.features import grid_features
from oirl_fast.kernels.quickscorer import (
    FactorizedScorer,
    ForestDescription,
    UnsupportedModel,
    _strict_threshold,
)

D = 384


def _split(X):
    """Unique query and prompt embeddings of pair rows, and each row's indices into them."""
    Q, qi = np.unique(X[:, :D], axis=0, return_inverse=True)
    P, pi = np.unique(X[:, D:], axis=0, return_inverse=True)
    return Q, P, qi.ravel(), pi.ravel()


def _lgb(X, y, rounds=60, **extra):
    import lightgbm as lgb

    params = {"objective": "binary", "num_leaves": 63, "min_data_in_leaf": 5, "learning_rate": 0.1,
              "feature_fraction": 0.5, "verbosity": -1, "num_threads": 2, "seed": 0, "deterministic": True}
    params.update(extra)
    return lgb.train(params, lgb.Dataset(X, y), num_boost_round=rounds)


def _xgb(X, y, rounds=60, **extra):
    import xgboost as xgb

    params = {"objective": "binary:logistic", "max_depth": 6, "eta": 0.1, "colsample_bytree": 0.5,
              "nthread": 2, "seed": 0, "tree_method": "hist"}
    params.update(extra)
    return xgb.train(params, xgb.DMatrix(X, y), num_boost_round=rounds)


def _native(booster, X, raw=False):
    if type(booster).__module__.startswith("lightgbm"):
        return booster.predict(X, raw_score=raw, num_threads=2)
    import xgboost as xgb

    return booster.predict(xgb.DMatrix(X), output_margin=raw)


@pytest.fixture(scope="module")
def models(real_pairs):
    X, y = real_pairs
    return {"lightgbm": _lgb(X, y), "xgboost": _xgb(X, y)}


@pytest.mark.parametrize("backend", ["lightgbm", "xgboost"])
def test_scores_equal_native_on_real_pairs(models, real_pairs, backend):
    X, _ = real_pairs
    booster = models[backend]
    scorer = FactorizedScorer.from_booster(booster, D)
    assert scorer.info.max_leaves <= 64 and scorer.info.n_mixed > 0
    Q, P, qi, pi = _split(X)
    for raw in (True, False):
        grid = scorer.score(Q, P, raw=raw)
        # the real pairs themselves, and every query x every prompt
        np.testing.assert_allclose(grid[qi, pi], _native(booster, X, raw), rtol=0, atol=1e-5)
        native = _native(booster, grid_features(Q, P), raw).reshape(len(Q), len(P))
        np.testing.assert_allclose(grid, native, rtol=0, atol=1e-5)
    if backend == "lightgbm":  # same leaves, float64 sums: equal up to summation order
        diff = scorer.score(Q, P, raw=True) - _native(booster, grid_features(Q, P), True).reshape(grid.shape)
        assert np.abs(diff).max() < 1e-12


@pytest.mark.parametrize("backend", ["lightgbm", "xgboost"])
def test_picks_equal_native(models, real_pairs, backend):
    X, _ = real_pairs
    booster = models[backend]
    scorer = FactorizedScorer.from_booster(booster, D)
    Q, P, _, _ = _split(X)
    native = _native(booster, grid_features(Q, P)).reshape(len(Q), len(P))
    idx, score = scorer.best_of_n(Q, P)
    best = native.argmax(axis=1)
    top2 = np.sort(native, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-6  # XGBoost's float32 outputs can tie where the margins do not
    assert clear.mean() > 0.9
    assert np.array_equal(idx[clear, 0], best[clear])
    np.testing.assert_allclose(native[np.arange(len(Q)), idx[:, 0]], native.max(axis=1), atol=1e-6)
    np.testing.assert_allclose(score[:, 0], native.max(axis=1), atol=1e-5)
    # top-k: best first, the k largest scores, consistent with score()
    idx5, score5 = scorer.best_of_n(Q, P, top_k=5)
    assert idx5.shape == (len(Q), 5) and np.array_equal(idx5[:, 0], idx[:, 0])
    assert (np.diff(score5, axis=1) <= 0).all()
    full = scorer.score(Q, P)
    np.testing.assert_allclose(np.take_along_axis(full, idx5, 1), score5, atol=1e-12)
    np.testing.assert_allclose(score5, -np.sort(-full, axis=1)[:, :5], atol=1e-12)
    assert all(len(set(r)) == 5 for r in idx5.tolist())


def test_matches_reference_and_native_on_odd_block_sizes(models, real_pairs):
    """Query counts that are not a multiple of the SIMD block, a single prompt, k > n prompts."""
    X, _ = real_pairs
    booster = models["lightgbm"]
    scorer = FactorizedScorer.from_booster(booster, D)
    Q, P, _, _ = _split(X)
    for nq in (1, 15, 17, 33):
        q = Q[:nq]
        ref = scorer.forest.predict_margin_reference(grid_features(q, P)).reshape(nq, len(P))
        np.testing.assert_allclose(scorer.score(q, P, raw=True), ref, rtol=0, atol=1e-12)
    idx, s = scorer.best_of_n(Q[:7], P[:1], top_k=3)
    assert idx.shape == (7, 1) and (idx == 0).all()
    idx, s = scorer.best_of_n(Q[:0], P)
    assert idx.shape == (0, 1)


def test_query_only_prompt_only_and_constant_trees(real_pairs):
    """Interaction constraints make every tree query-only or prompt-only; both must still be exact."""
    X, y = real_pairs
    groups = [list(range(D)), list(range(D, 2 * D))]
    booster = _lgb(X, y, rounds=30, interaction_constraints=groups, num_leaves=15)
    scorer = FactorizedScorer.from_booster(booster, D)
    assert scorer.info.n_mixed == 0 and scorer.info.n_query_only > 0 and scorer.info.n_prompt_only > 0
    Q, P, _, _ = _split(X)
    native = _native(booster, grid_features(Q, P)).reshape(len(Q), len(P))
    np.testing.assert_allclose(scorer.score(Q, P), native, atol=1e-12)
    np.testing.assert_array_equal(scorer.best_of_n(Q, P)[0][:, 0], native.argmax(axis=1))
    # XGBoost with a huge split penalty: every tree is a single leaf
    stumps = _xgb(X[:500], y[:500], rounds=5, gamma=1e9)
    sc = FactorizedScorer.from_booster(stumps, D)
    assert sc.info.n_constant == 5
    np.testing.assert_allclose(sc.score(Q[:3], P).ravel(), _native(stumps, grid_features(Q[:3], P)), atol=1e-6)


def test_forest_description_reads_both_libraries_through_treelite(models):
    lg = ForestDescription.from_booster(models["lightgbm"])
    xg = ForestDescription.from_booster(models["xgboost"])
    assert (lg.source, lg.comparison, lg.threshold_type) == ("lightgbm", "<=", "float64")
    assert (xg.source, xg.comparison, xg.threshold_type) == ("xgboost", "<", "float32")
    for f in (lg, xg):
        assert f.postprocessor == "sigmoid" and f.n_trees == 60 and f.n_features == 2 * D
        assert f.node_threshold.dtype == np.float32 and f.node_mask.dtype == np.uint64
        assert len(f.node_feature) == sum(int(n) - 1 for n in f.n_leaves)


def test_strict_threshold_rewrites_each_rule_exactly():
    rng = np.random.default_rng(0)
    t64 = np.concatenate([rng.normal(size=500), [0.0, -0.0, 1e-40, 1.5]])
    for t in t64:
        T_le, T_lt = _strict_threshold("<=", float(t)), _strict_threshold("<", float(t))
        base = np.float32(t)
        xs = [base, np.nextafter(base, np.float32(-1)), np.nextafter(base, np.float32(1)), np.float32(0)]
        for x in xs:
            assert (float(x) <= t) == (x < T_le)
            assert (float(x) < t) == (x < T_lt)


def test_rejects_nan_and_wrong_shapes(models, real_pairs):
    X, _ = real_pairs
    scorer = FactorizedScorer.from_booster(models["lightgbm"], D)
    Q, P, _, _ = _split(X)
    bad = Q[:4].copy()
    bad[2, 7] = np.nan
    with pytest.raises(OirlError, match="NaN"):
        scorer.best_of_n(bad, P)
    with pytest.raises(OirlError, match="NaN"):
        scorer.score(Q[:2], np.where(np.arange(D) == 3, np.nan, P))
    with pytest.raises(OirlError, match="shape"):
        scorer.score(Q[:, :100], P)


def test_big_trees_are_refused(real_pairs):
    X, y = real_pairs
    booster = _lgb(X, y, rounds=2, num_leaves=100, min_data_in_leaf=2)
    with pytest.raises(UnsupportedModel, match="leaves"):
        FactorizedScorer.from_booster(booster, D)


def test_cuda_kernel_under_simulator(models, real_pairs, tmp_path):
    """The numba.cuda kernel, run by numba's CUDA simulator in a subprocess, picks what the CPU kernel picks."""
    pytest.importorskip("numba.cuda")
    X, _ = real_pairs
    Q, P, _, _ = _split(X)
    q, p = Q[:20], P[:16]
    booster = models["lightgbm"]
    model = tmp_path / "m.lgb.txt"
    booster.save_model(str(model), num_iteration=8)
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "p.npy", p)
    code = textwrap.dedent(f"""
        import numpy as np
        from oirl_fast.kernels.quickscorer import FactorizedScorer, ForestDescription
        from oirl_fast.kernels.cuda import CudaFactorizedScorer
        forest = ForestDescription.from_file({str(model)!r}, "lightgbm")
        q, p = np.load({str(tmp_path / 'q.npy')!r}), np.load({str(tmp_path / 'p.npy')!r})
        gpu = CudaFactorizedScorer(forest, {D})
        cpu = FactorizedScorer(forest, {D})
        i1, s1 = gpu.best_of_n(q, p, top_k=3)
        i2, s2 = cpu.best_of_n(q, p, top_k=3)
        assert np.array_equal(i1, i2), (i1, i2)
        assert np.abs(s1 - s2).max() < 1e-9
        g1, g2 = gpu.score(q[:3], p), cpu.score(q[:3], p)
        assert np.abs(g1 - g2).max() < 1e-9
        print("CUDASIM-OK")
    """)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    try:
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.skip("CUDA simulator too slow here")
    if res.returncode != 0 and "CudaSupportError" in res.stderr:
        pytest.skip("numba CUDA simulator unavailable")
    assert res.returncode == 0 and "CUDASIM-OK" in res.stdout, res.stderr[-3000:]


def test_tiny_values_follow_lightgbm_zero_rule(models, real_pairs):
    """LightGBM reads |x| <= 1e-35 as 0.0 (and splits at -1e-35); the kernel must agree."""
    X, _ = real_pairs
    booster = models["lightgbm"]
    scorer = FactorizedScorer.from_booster(booster, D)
    Q, P, _, _ = _split(X)
    q = Q[:20].copy()
    feats = np.unique(scorer.forest.node_feature[scorer.forest.node_feature < D])[:50]
    q[:, feats] = np.float32(-1e-36)
    native = _native(booster, grid_features(q, P), raw=True).reshape(len(q), len(P))
    np.testing.assert_allclose(scorer.score(q, P, raw=True), native, rtol=0, atol=1e-12)
