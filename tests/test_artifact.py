"""Model artifacts: round trip, and a failed write never leaves a partial artifact."""
import json

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
    with pytest.raises(OirlError, match="no manifest.json"):
        art.load_artifact(tmp_path)
    model, X = small_model
    prompt_emb = X[:2, 384:].copy()
    art.save_artifact(tmp_path / "m", model, _metadata(prompt_emb), prompt_emb, compile_library=False)
    with pytest.raises(OirlError, match="built for prompts"):
        art.load_artifact(tmp_path / "m", prompt_ids=["p0", "other"])
    with pytest.raises(OirlError, match="embedding model"):
        art.load_artifact(tmp_path / "m", embedding_model="openai/text-embedding-3-large")


def _saved(tmp_path, small_model, compile_library=False):
    model, X = small_model
    prompt_emb = X[:3, 384:].copy()
    art.save_artifact(tmp_path / "m", model, _metadata(prompt_emb), prompt_emb, compile_library=compile_library)
    return tmp_path / "m", X


def test_checksums_cover_every_file_and_catch_tampering(tmp_path, small_model):
    path, _ = _saved(tmp_path, small_model)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["schema_version"] == art.ARTIFACT_SCHEMA_VERSION
    # metadata.json included: every file but the manifest itself
    assert sorted(manifest["files"]) == sorted(
        str(f.relative_to(path)) for f in path.rglob("*") if f.is_file() and f.name != "manifest.json"
    )
    model_file = path / "model.lgb.txt"
    model_file.write_text(model_file.read_text().replace("leaf_value=", "leaf_value=1", 1))
    with pytest.raises(OirlError, match=r"model.lgb.txt: file does not match its checksum"):
        art.load_artifact(path)


def test_edited_metadata_is_refused(tmp_path, small_model):
    """An edited prompt text used to be reported in the picks and scored with the old embedding."""
    path, _ = _saved(tmp_path, small_model)
    meta_file = path / "metadata.json"
    meta_file.write_text(meta_file.read_text().replace('"prompt 1"', '"Let\'s think step by step."'))
    with pytest.raises(OirlError, match=r"metadata.json: file does not match its checksum in manifest.json"):
        art.load_artifact(path)
    # dropping metadata.json's entry from the manifest does not get it past either
    man_file = path / "manifest.json"
    manifest = json.loads(man_file.read_text())
    del manifest["files"]["metadata.json"]
    man_file.write_text(json.dumps(manifest))
    with pytest.raises(OirlError, match=r"manifest.json: manifest.json has no checksum for metadata.json"):
        art.load_artifact(path)


def test_refuses_other_schema_version_and_feature_layout(tmp_path, small_model):
    path, _ = _saved(tmp_path, small_model)
    with pytest.raises(OirlError, match="feature layout"):
        art.load_artifact(path, feature_layout=FeatureLayout(768, 768))
    art.load_artifact(path, feature_layout=FeatureLayout(384, 384))
    man_file = path / "manifest.json"
    manifest = json.loads(man_file.read_text())
    manifest["schema_version"] = 4
    man_file.write_text(json.dumps(manifest))
    with pytest.raises(OirlError, match="manifest.json: artifact schema version 4, this oirl-fast reads 3"):
        art.load_artifact(path)


def test_schema_2_artifact_is_refused_with_a_clear_message(tmp_path, small_model):
    """Schema 2 kept its checksums inside metadata.json, which nothing checked: not safe to read."""
    path, _ = _saved(tmp_path, small_model)
    (path / "manifest.json").unlink()
    meta = json.loads((path / "metadata.json").read_text())
    meta.update(schema_version=2, checksums={}, compiled_library=None)
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(OirlError, match=r"schema version 2 without manifest.json; .* retrain it"):
        art.load_artifact(path)


def test_training_questions_are_stored_sorted_and_checksummed(tmp_path, small_model):
    from oirl_fast.schema import question_hashes

    model, X = small_model
    prompt_emb = X[:3, 384:].copy()
    texts = ["How many apples ?", "how many  apples?", "What is 2 + 3?"]
    hashes = question_hashes(texts)
    assert hashes.dtype == np.uint64 and hashes[0] == hashes[1] != hashes[2]  # normalized text, not raw
    art.save_artifact(tmp_path / "m", model, _metadata(prompt_emb), prompt_emb, compile_library=False,
                      train_questions=hashes)
    loaded = art.load_artifact(tmp_path / "m")
    np.testing.assert_array_equal(loaded.train_questions, np.unique(hashes))
    assert loaded.metadata.train_questions["count"] == 2
    np.save(tmp_path / "m" / "train_questions.npy", np.unique(question_hashes(["another question"])))
    with pytest.raises(OirlError, match="train_questions.npy: file does not match its checksum"):
        art.load_artifact(tmp_path / "m")


def test_model_with_non_finite_leaves_is_never_written(tmp_path, small_model):
    import lightgbm as lgb

    model, X = small_model
    prompt_emb = X[:3, 384:].copy()
    target = tmp_path / "m"
    art.save_artifact(target, model, _metadata(prompt_emb), prompt_emb, compile_library=False)
    before = {f.name: f.read_bytes() for f in target.iterdir()}
    # A diverged fit: every leaf finite but huge, so the sum over trees overflows. (LightGBM cannot
    # even parse a literal inf leaf back; TrainConfig now refuses the learning rates that made these.)
    lines = []
    for ln in model.booster.model_to_string().splitlines():
        if ln.startswith("tree_sizes="):  # byte offsets of the trees, which the edit changes
            continue
        if ln.startswith("leaf_value="):
            ln = "leaf_value=" + " ".join("1.5e308" for _ in ln.split("=")[1].split())
        lines.append(ln)
    broken = RewardModel(model.config)
    broken.booster = lgb.Booster(model_str="\n".join(lines) + "\n")
    broken.n_features, broken.best_iteration = model.n_features, model.best_iteration
    with np.errstate(over="ignore"):
        assert not np.isfinite(broken.booster.predict(X[:50], raw_score=True)).all()
    with pytest.raises(OirlError, match="overflows to infinity; nothing written"):
        art.save_artifact(target, broken, _metadata(prompt_emb), prompt_emb, compile_library=False)
    assert {f.name: f.read_bytes() for f in target.iterdir()} == before  # the old artifact is untouched


def _snapshot(folder):
    """Every file and folder under ``folder``: bytes (files) and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in sorted([folder, *folder.rglob("*")])}


@pytest.mark.slow
def test_library_from_another_platform_is_rebuilt_in_the_cache_not_loaded(tmp_path, small_model, monkeypatch):
    from oirl_fast.train.compile import CompiledPredictor

    monkeypatch.setenv("OIRL_CACHE_DIR", str(tmp_path / "cache"))
    path, X = _saved(tmp_path, small_model, compile_library=True)
    lib = path / art.LIBRARY_FILE
    meta = json.loads((path / "manifest.json").read_text())
    meta["compiled_library"]["platform"] = "Plan9-sparc64-py2.7"
    (path / "manifest.json").write_text(json.dumps(meta))
    lib.write_bytes(b"\x7fELF not really a library")  # would crash or fail if it were loaded
    before = _snapshot(path)
    loaded = art.load_artifact(path)
    assert "platform" in art.library_mismatch(loaded)
    notes = []
    rebuilt = art.usable_library(loaded, notes.append)
    assert rebuilt == art.cached_library_path(loaded) and (tmp_path / "cache") in rebuilt.parents
    assert len(notes) == 1 and "platform" in notes[0]
    np.testing.assert_allclose(CompiledPredictor(rebuilt).predict(X[:50]), loaded.model.predict(X[:50]), atol=1e-5)
    assert art.usable_library(art.load_artifact(path), notes.append) == rebuilt and len(notes) == 1  # built once
    assert _snapshot(path) == before  # the model folder is never written to
