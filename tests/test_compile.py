"""Compiled reward models (treelite + tl2cgen) must score like the native boosters."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from oirl_fast.errors import OirlError
from oirl_fast.train import compile as comp
from oirl_fast.train.compile import CompiledPredictor, compile_library
from oirl_fast.train.model_format import load_treelite_model

ATOL = 1e-5
N_TEST = 2000




# Training uses one thread: on a busy 2-core machine OpenMP spin-waiting made LightGBM with
# num_threads=2 up to 10x slower than with 1.


def _split(real_pairs):
    X, y = real_pairs
    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.asarray(y).astype(int)
    n = len(X)
    if n >= 2 * N_TEST:
        return X[: n - N_TEST], y[: n - N_TEST], X[n - N_TEST:]
    return X, y, X[:N_TEST]


@pytest.fixture(scope="module")
def lgb_case(real_pairs, tmp_path_factory):
    lgb = pytest.importorskip("lightgbm")
    Xtr, ytr, Xte = _split(real_pairs)
    params = dict(objective="binary", num_leaves=63, learning_rate=0.1, max_bin=63,
                  min_data_in_leaf=20, num_threads=1, verbose=-1, seed=0)
    booster = lgb.train(params, lgb.Dataset(Xtr, ytr), num_boost_round=60)
    d = tmp_path_factory.mktemp("lgb")
    model_file = d / "reward.txt"
    booster.save_model(str(model_file))
    lib = compile_library(model_file, "lightgbm", d / "reward.so")
    return model_file, lib, booster, Xte


@pytest.fixture(scope="module")
def xgb_case(real_pairs, tmp_path_factory):
    xgb = pytest.importorskip("xgboost")
    Xtr, ytr, Xte = _split(real_pairs)
    params = dict(objective="binary:logistic", max_depth=6, eta=0.1, tree_method="hist",
                  max_bin=64, nthread=1, seed=0)
    booster = xgb.train(params, xgb.DMatrix(Xtr, label=ytr), num_boost_round=60)
    d = tmp_path_factory.mktemp("xgb")
    model_file = d / "reward.json"
    booster.save_model(str(model_file))
    lib = compile_library(model_file, "xgboost", d / "reward.so")
    return model_file, lib, booster, Xte


def _xgb_native(booster, X):
    import xgboost as xgb

    return booster.predict(xgb.DMatrix(X)).astype(np.float64)


def _split_points(model_file, backend, rng, k=400):
    """(feature, threshold) pairs of k random internal nodes, thresholds in the model's type."""
    model = load_treelite_model(model_file, backend)
    feats, thrs = [], []
    for t in range(model.num_tree):
        acc = model.get_tree_accessor(t)
        internal = acc.get_field("cleft") != -1
        feats.append(acc.get_field("split_index")[internal])
        thrs.append(acc.get_field("threshold")[internal])
    feats, thrs = np.concatenate(feats), np.concatenate(thrs)
    pick = rng.choice(len(feats), size=min(k, len(feats)), replace=False)
    return feats[pick], thrs[pick]


def _on_the_edges(X, feats, thrs, dtype):
    """Copies of X with features set exactly on split thresholds and their neighbours."""
    rng = np.random.default_rng(1)
    out = []
    for shift in (0, -1, 1):
        Z = X.astype(dtype, copy=True)
        t = thrs.astype(dtype)
        if shift:
            t = np.nextafter(t, np.asarray(shift * np.inf, dtype=dtype))
        for r in range(len(Z)):
            sel = rng.choice(len(feats), size=40, replace=False)
            Z[r, feats[sel]] = t[sel]
        out.append(Z)
    return np.concatenate(out)


# --- equality with the native boosters -------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lightgbm_matches_native(lgb_case, dtype):
    _, lib, booster, Xte = lgb_case
    pred = CompiledPredictor(lib)
    assert pred.threshold_type == "float64"  # LightGBM thresholds stay double precision
    X = Xte.astype(dtype)
    got = pred.predict(X)
    assert got.shape == (len(X),) and got.dtype == np.float64
    np.testing.assert_allclose(got, booster.predict(X), rtol=0, atol=ATOL)
    assert 0.0 < got.min() and got.max() < 1.0


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_xgboost_matches_native(xgb_case, dtype):
    _, lib, booster, Xte = xgb_case
    pred = CompiledPredictor(lib)
    assert pred.threshold_type == "float32"
    X = Xte.astype(dtype)
    got = pred.predict(X)
    assert got.shape == (len(X),) and got.dtype == np.float64
    np.testing.assert_allclose(got, _xgb_native(booster, X), rtol=0, atol=ATOL)


@pytest.mark.slow
def test_lightgbm_exact_on_split_thresholds(lgb_case):
    """Inputs sitting exactly on (and one ulp around) float64 thresholds branch like LightGBM."""
    model_file, lib, booster, Xte = lgb_case
    feats, thrs = _split_points(model_file, "lightgbm", np.random.default_rng(2))
    X = _on_the_edges(Xte[:100], feats, thrs, np.float64)
    np.testing.assert_allclose(CompiledPredictor(lib).predict(X), booster.predict(X), rtol=0, atol=ATOL)


@pytest.mark.slow
def test_xgboost_exact_on_split_thresholds(xgb_case):
    model_file, lib, booster, Xte = xgb_case
    feats, thrs = _split_points(model_file, "xgboost", np.random.default_rng(2))
    X = _on_the_edges(Xte[:100], feats, thrs, np.float32)
    np.testing.assert_allclose(CompiledPredictor(lib).predict(X), _xgb_native(booster, X), rtol=0, atol=ATOL)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lightgbm_tiny_values_count_as_zero(lgb_case, dtype):
    """LightGBM scores |x| <= 1e-35 as 0.0 and has splits at exactly -1e-35."""
    model_file, lib, booster, Xte = lgb_case
    feats, thrs = _split_points(model_file, "lightgbm", np.random.default_rng(3), k=10**9)
    near_zero = np.unique(feats[np.abs(thrs) < 1e-30])
    kz = float(np.float32(1e-35))
    tiny = np.array([kz, -kz, 1e-36, -1e-36, 1e-40, -1e-40, 0.0, -0.0,
                     np.nextafter(kz, 1.0), np.nextafter(-kz, -1.0)], dtype=dtype)
    rng = np.random.default_rng(4)
    X = Xte[:200].astype(dtype, copy=True)
    for r in range(len(X)):
        cols = np.concatenate([near_zero, rng.choice(X.shape[1], size=30, replace=False)])
        X[r, cols] = rng.choice(tiny, size=len(cols))
    np.testing.assert_allclose(CompiledPredictor(lib).predict(X), booster.predict(X), rtol=0, atol=ATOL)


@pytest.mark.slow
def test_float64_values_that_look_missing(lgb_case):
    """tl2cgen 1.0.0 reads float64 values whose low 32 bits are all ones as 'missing'.

    predict() must still agree with LightGBM on such (finite, legal) inputs.
    """
    _, lib, booster, Xte = lgb_case
    X = Xte[:300].astype(np.float64)
    X.view(np.uint64)[...] |= np.uint64(0xFFFFFFFF)
    assert np.isfinite(X).all()
    np.testing.assert_allclose(CompiledPredictor(lib).predict(X), booster.predict(X), rtol=0, atol=ATOL)


@pytest.mark.slow
def test_small_batches_and_layouts(lgb_case):
    _, lib, booster, Xte = lgb_case
    pred = CompiledPredictor(lib, nthread=2)
    assert pred.predict(Xte[:0]).shape == (0,)
    np.testing.assert_allclose(pred.predict(Xte[:1]), booster.predict(Xte[:1]), rtol=0, atol=ATOL)
    F = np.asfortranarray(Xte[:50])
    np.testing.assert_allclose(pred.predict(F), booster.predict(Xte[:50]), rtol=0, atol=ATOL)


# --- errors ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_bad_inputs_rejected(lgb_case):
    _, lib, _, Xte = lgb_case
    pred = CompiledPredictor(lib)
    X = Xte[:5].copy()
    X[3, 7] = np.nan
    with pytest.raises(OirlError, match="NaN or inf.*row 3"):
        pred.predict(X)
    with pytest.raises(OirlError, match="shape"):
        pred.predict(Xte[:5, :100])
    with pytest.raises(OirlError, match="shape"):
        pred.predict(Xte[0])


def test_missing_library(tmp_path):
    missing = tmp_path / "nope.so"
    with pytest.raises(OirlError) as info:
        CompiledPredictor(missing)
    assert str(missing) in str(info.value)


def test_corrupt_library(tmp_path):
    bad = tmp_path / "bad.so"
    bad.write_bytes(b"\x7fELF this is not a shared library")
    with pytest.raises(OirlError) as info:
        CompiledPredictor(bad)
    assert str(bad) in str(info.value)


def test_bad_model_files(tmp_path):
    with pytest.raises(OirlError, match="not found"):
        load_treelite_model(tmp_path / "absent.txt", "lightgbm")
    junk = tmp_path / "junk.txt"
    junk.write_text("not a model\n")
    with pytest.raises(OirlError) as info:
        load_treelite_model(junk, "lightgbm")
    assert str(junk) in str(info.value)
    with pytest.raises(OirlError, match="backend"):
        load_treelite_model(junk, "catboost")


# --- atomicity, reloading, quiet output --------------------------------------------------------

@pytest.mark.slow
def test_failed_compile_keeps_old_library(lgb_case, tmp_path, monkeypatch):
    model_file, lib, _, _ = lgb_case
    target = tmp_path / "reward.so"
    shutil.copyfile(lib, target)
    before = target.read_bytes()

    import tl2cgen

    def boom(*args, **kwargs):
        raise RuntimeError("gcc exploded")

    monkeypatch.setattr(tl2cgen, "export_lib", boom)
    with pytest.raises(OirlError, match="gcc exploded"):
        compile_library(model_file, "lightgbm", target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reward.so"]  # no temp leftovers


@pytest.mark.slow
def test_replaced_library_is_reloaded(lgb_case, xgb_case, tmp_path):
    """The dynamic loader caches by path; a rebuilt .so at the same path must still be used."""
    target = tmp_path / "reward.so"
    shutil.copyfile(lgb_case[1], target)
    old = CompiledPredictor(target)  # keeps the LightGBM library loaded
    staged = tmp_path / "staged.so"
    shutil.copyfile(xgb_case[1], staged)
    os.replace(staged, target)  # what compile_library's atomic rename does
    new = CompiledPredictor(target)
    assert (old.threshold_type, new.threshold_type) == ("float64", "float32")
    X = xgb_case[3][:200]
    np.testing.assert_allclose(new.predict(X), _xgb_native(xgb_case[2], X), rtol=0, atol=ATOL)
    np.testing.assert_allclose(old.predict(X), lgb_case[2].predict(X), rtol=0, atol=ATOL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reward.so"]  # load links removed


def test_quiet_native_filters_only_version_notice(capfd):
    with comp._quiet_native(verbose=False):
        os.write(2, b"[12:00:00] serializer.cc:202: The model you are loading originated from a "
                    b"newer Treelite version; some functionalities may be unavailable.\n"
                    b"Currently running Treelite version 4.1.2\n"
                    b"The model checkpoint was generated from Treelite version 4.8.1\n"
                    b"gcc: real problem\n")
        print("tl2cgen info chatter")
    out, err = capfd.readouterr()
    assert "Treelite version" not in err and "gcc: real problem" in err
    assert "chatter" not in out
