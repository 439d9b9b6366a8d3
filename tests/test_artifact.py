"""Model artifacts: round trip, and a failed write never leaves a partial artifact."""
import numpy as np
import pytest

from oirl_fast.errors import OirlError
from oirl_fast.features import FeatureLayout
from oirl_fast.train import artifact as art
from oirl_fast.train.reward_model import RewardModel, TrainConfig


@pytest.fixture(scope="module")
def small_model(real_pairs):
    X, y = real_pairs
    model = RewardModel(TrainConfig(n_estimators=20, early_stopping_rounds=5)).fit(X, y)
    return model, X


def _metadata(prompt_emb):
    return art.ModelMetadata(
        dataset="gsm8k", backend="lightgbm", embedding_model="sentence-transformers/all-MiniLM-L6-v2",
        feature_layout=FeatureLayout(384, 384).to_dict(),
        prompts=[{"id": f"p{i}", "text": f"prompt {i}", "seen_in_training": True} for i in range(len(prompt_emb))],
        prompt_embeddings_sha256=art.embeddings_hash(prompt_emb), protocol={"name": "published"},
        train_config=TrainConfig(n_estimators=20).to_dict(), best_iteration=20, n_train_examples=10,
    )


def test_roundtrip_predicts_the_same(small_model, tmp_path):
    model, X = small_model
    prompt_emb = X[:3, 384:].copy()
    art.save_artifact(tmp_path / "m", model, _metadata(prompt_emb), prompt_emb, compile_library=False)
    loaded = art.load_artifact(tmp_path / "m", prompt_ids=["p2", "p0", "p1"])
    np.testing.assert_array_equal(loaded.model.predict(X[:100]), model.predict(X[:100]))
    np.testing.assert_array_equal(loaded.prompt_embeddings, prompt_emb)


def test_failed_compile_leaves_old_artifact_untouched(small_model, tmp_path, monkeypatch):
    model, X = small_model
    prompt_emb = X[:3, 384:].copy()
    target = tmp_path / "m"
    art.save_artifact(target, model, _metadata(prompt_emb), prompt_emb, compile_library=False)
    before = sorted(p.name for p in target.iterdir())

    import oirl_fast.train.compile as compile_mod

    def boom(*a, **k):
        raise OirlError("compiler exploded")

    monkeypatch.setattr(compile_mod, "compile_library", boom)
    with pytest.raises(OirlError, match="compiler exploded"):
        art.save_artifact(target, model, _metadata(prompt_emb), prompt_emb, compile_library=True)
    assert sorted(p.name for p in target.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary directory left behind


def test_missing_metadata_and_wrong_prompt_set(tmp_path, small_model):
    with pytest.raises(OirlError, match="no metadata.json"):
        art.load_artifact(tmp_path)
    model, X = small_model
    prompt_emb = X[:2, 384:].copy()
    art.save_artifact(tmp_path / "m", model, _metadata(prompt_emb), prompt_emb, compile_library=False)
    with pytest.raises(OirlError, match="built for prompts"):
        art.load_artifact(tmp_path / "m", prompt_ids=["p0", "other"])
    with pytest.raises(OirlError, match="embedding model"):
        art.load_artifact(tmp_path / "m", embedding_model="openai/text-embedding-3-large")
