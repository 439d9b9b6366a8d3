"""Shared fixtures: real data subsets, embedded once per test session."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# The repo root holds `kernels/`, `train/` and `collect/`, installed as `oirl_fast.*`; on sys.path
# they would shadow PyPI packages of those names (transformers imports `kernels` when it exists).
# `python -m pytest` puts the working directory first, so take it off again, and keep it off in
# the `python -c` subprocesses that tests start (PYTHONSAFEPATH, Python 3.11+).
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO_ROOT]
os.environ["PYTHONSAFEPATH"] = "1"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("embedding-cache")


@pytest.fixture(scope="session")
def static_cache(cache_dir):
    """The session cache with the static embedder built in it: distilled once per test session
    (about 15 s on a quiet machine); `oirl train` without --embedder uses it."""
    from oirl_fast.encoders import build_static

    build_static(cache_dir)
    return cache_dir


@pytest.fixture(scope="session")
def embedder(cache_dir):
    from oirl_fast.embed import Embedder

    return Embedder(cache_dir=cache_dir, progress=False)


@pytest.fixture(scope="session")
def mawps_log():
    from oirl_fast.collect.published import import_published

    return import_published("mawps")


@pytest.fixture(scope="session")
def mawps_small(mawps_log):
    """A real MAWPS log cut to 300 questions (every row of each), keeping published splits."""
    groups = pc.unique(mawps_log.column("group")).to_pylist()
    test_groups = set(mawps_log.filter(pc.equal(mawps_log.column("split"), "test")).column("group").to_pylist())
    rng = np.random.default_rng(0)
    keep = [g for g in groups if g in test_groups]
    keep = list(rng.choice(sorted(keep), size=300, replace=False))
    return mawps_log.filter(pc.is_in(mawps_log.column("group"), pa.array(keep)))


@pytest.fixture(scope="session")
def real_pairs(embedder):
    """(X float32 (4000, 768), y int (n,)): real GSM8K (query, prompt) pairs with their logged outcome."""
    from oirl_fast.collect.published import import_published
    from oirl_fast.features import pair_features

    log = import_published("gsm8k")
    rows = log.filter(pc.equal(log.column("split"), "test"))
    ids = sorted(set(rows.column("query_id").to_pylist()))
    chosen = np.random.default_rng(1).choice(ids, size=250, replace=False)
    rows = rows.filter(pc.is_in(rows.column("query_id"), pa.array(chosen)))  # 250 queries x 16 prompts
    queries = rows.column("query").to_pylist()
    prompts = rows.column("prompt").to_pylist()
    uq, qi = np.unique(queries, return_inverse=True)
    up, pi = np.unique(prompts, return_inverse=True)
    X = pair_features(embedder.embed(list(uq)), embedder.embed(list(up)), qi, pi)
    y = rows.column("correct").to_numpy(zero_copy_only=False).astype(int)
    return X, y


@pytest.fixture(scope="session")
def reseal():
    """reseal(model_dir): rewrite manifest.json's checksums after a test edited the artifact's files,
    so the edit stands for a genuinely different model rather than a tampered one."""
    import json

    from oirl_fast.train.artifact import MANIFEST_FILE, file_sha256

    def run(model_dir):
        path = model_dir / MANIFEST_FILE
        manifest = json.loads(path.read_text())
        manifest["files"] = {rel: file_sha256(model_dir / rel) for rel in manifest["files"]}
        path.write_text(json.dumps(manifest))

    return run


@pytest.fixture(scope="session")
def make_artifact(real_pairs):
    """make_artifact(path, n_estimators=10, n_prompts=4) -> path: a small LightGBM artifact on the real
    pairs, prompts ``p0..`` with the first rows' prompt embeddings (no compiled library)."""
    from oirl_fast.features import FeatureLayout
    from oirl_fast.train import artifact as art
    from oirl_fast.train.reward_model import RewardModel, TrainConfig

    X, y = real_pairs

    def make(path, n_estimators: int = 10, n_prompts: int = 4):
        config = TrainConfig(n_estimators=n_estimators, early_stopping_rounds=1000)
        model = RewardModel(config).fit(X, y)
        p_emb = np.ascontiguousarray(X[:n_prompts, 384:])
        meta = art.ModelMetadata(
            dataset="gsm8k", backend="lightgbm", embedding_model="sentence-transformers/all-MiniLM-L6-v2",
            feature_layout=FeatureLayout(384, 384).to_dict(),
            prompts=[{"id": f"p{i}", "text": f"prompt {i}", "seen_in_training": True} for i in range(n_prompts)],
            prompt_embeddings_sha256=art.embeddings_hash(p_emb), protocol={"name": "test"},
            train_config=config.to_dict(), best_iteration=model.best_iteration, n_train_examples=len(y),
        )
        art.save_artifact(path, model, meta, p_emb, compile_library=False)
        return path

    return make


@pytest.fixture(scope="session")
def gsm8k_model(real_pairs, embedder, tmp_path_factory):
    """A small reward model over the 16 GSM8K prompts, trained on real test-set pairs (for oirl tradeoff
    and oirl answer on the bundled GSM8K answers)."""
    from oirl_fast.collect.published import load_prompts
    from oirl_fast.features import FeatureLayout
    from oirl_fast.train import artifact as art
    from oirl_fast.train.reward_model import RewardModel, TrainConfig

    X, y = real_pairs
    prompts = load_prompts()
    p_emb = embedder.embed([p.text for p in prompts])
    model = RewardModel(TrainConfig(n_estimators=20)).fit(X, y)
    meta = art.ModelMetadata(
        dataset="gsm8k", backend="lightgbm", embedding_model=embedder.model_id,
        feature_layout=FeatureLayout(384, 384).to_dict(),
        prompts=[{"id": p.id, "text": p.text, "seen_in_training": p.role == "train"} for p in prompts],
        prompt_embeddings_sha256=art.embeddings_hash(p_emb), protocol={"name": "published"},
        train_config=model.config.to_dict(), best_iteration=model.best_iteration, n_train_examples=len(y),
        calibration=model.calibrator.to_dict(),
    )
    out = tmp_path_factory.mktemp("tradeoff") / "m"
    art.save_artifact(out, model, meta, p_emb, compile_library=False)
    return out
