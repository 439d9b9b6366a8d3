"""The static embedder and the kernel trees an artifact carries: stored exactly, verified on load."""
from __future__ import annotations

import json

import numpy as np
import pytest

from oirl_fast import encoders
from oirl_fast.encoders.static_store import EMBEDDER_DIR, load_static_model, stored_static_encoder
from oirl_fast.errors import OirlError
from oirl_fast.kernels.forest_file import FOREST_FILE, load_forest
from oirl_fast.kernels.quickscorer import FactorizedScorer, ForestDescription
from oirl_fast.train import artifact as art

TEXTS = ["Tom has 3 apples and eats one. How many are left?", "", "Ünïcödé façade — 中文 text", "[UNK] x" * 50]


@pytest.fixture(scope="module")
def stored_model(static_cache, make_artifact, tmp_path_factory):
    """A small artifact written with the session's static build as its embedder."""
    build = encoders.static_model_dir(static_cache)
    path = make_artifact(tmp_path_factory.mktemp("store") / "m")
    loaded = art.load_artifact(path)
    out = tmp_path_factory.mktemp("store") / "with-embedder"
    art.save_artifact(out, loaded.model, loaded.metadata, loaded.prompt_embeddings, compile_library=False,
                      embedder_folder=build)
    return out, build


def test_the_artifact_carries_the_build_byte_for_byte(stored_model):
    path, build = stored_model
    a = art.load_artifact(path)
    assert a.embedder_folder == path / EMBEDDER_DIR and a.forest_path == path / FOREST_FILE
    stored = sorted(p.relative_to(a.embedder_folder).as_posix() for p in a.embedder_folder.rglob("*") if p.is_file())
    assert stored == sorted(p.relative_to(build).as_posix() for p in build.rglob("*")
                            if p.is_file() and p.name != "README.md")
    for rel in stored:
        assert (a.embedder_folder / rel).read_bytes() == (build / rel).read_bytes()
        assert f"{EMBEDDER_DIR}/{rel}" in a.manifest.files
    # the weights are model2vec's float16, about 15 MB
    weights = load_static_model(a.embedder_folder).embedding
    assert weights.dtype == np.float16 and weights.shape[1] == 256


def test_the_stored_encoder_is_the_build_encoder(stored_model):
    path, build = stored_model
    cached = encoders.StaticEncoder(build)
    stored = stored_static_encoder(path / EMBEDDER_DIR)
    assert stored.identity == cached.identity  # so a model's recorded embedder accepts it
    got, want = stored.encode(TEXTS), cached.encode(TEXTS)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    record = {"kind": "static", "name": cached.name, "dim": cached.dim, "identity": cached.identity}
    assert encoders.encoder_for_record(record, stored=path / EMBEDDER_DIR).folder == path / EMBEDDER_DIR


def test_the_stored_kernel_trees_score_as_the_native_file(stored_model):
    path, _ = stored_model
    a = art.load_artifact(path)
    from_file = ForestDescription.from_file(path / "model.lgb.txt", "lightgbm")
    from_store = load_forest(a.forest_path)
    for k in ("tree_ptr", "node_feature", "node_threshold", "node_mask", "leaf_values", "n_leaves"):
        assert np.array_equal(getattr(from_store, k), getattr(from_file, k)), k
    q = np.random.default_rng(0).normal(size=(20, 384)).astype(np.float32)
    s1 = FactorizedScorer(from_store, 384, 384).score(q, a.prompt_embeddings)
    s2 = FactorizedScorer(from_file, 384, 384).score(q, a.prompt_embeddings)
    assert np.array_equal(s1, s2)


def test_a_changed_stored_file_is_refused(stored_model, tmp_path, reseal):
    import shutil

    path, _ = stored_model
    copy = tmp_path / "m"
    shutil.copytree(path, copy)
    tok = copy / EMBEDDER_DIR / "tokenizer.json"
    tok.write_bytes(tok.read_bytes().replace(b'"[UNK]"', b'"[UNKNOWN]"', 1))
    with pytest.raises(OirlError, match="does not match its checksum") as info:
        art.load_artifact(copy)
    assert info.value.path == str(tok)
    # resealed (a consistent artifact with another tokenizer): the build record refuses it, and the
    # artifact's folder is left as it is (never discarded like a cache build)
    reseal(copy)
    art.load_artifact(copy)
    with pytest.raises(OirlError, match="stored static embedder does not match its recorded build"):
        stored_static_encoder(copy / EMBEDDER_DIR)
    assert tok.is_file()
    forest = copy / FOREST_FILE
    forest.write_bytes(b"not an npz")
    reseal(copy)
    with pytest.raises(OirlError, match="unreadable kernel tree file"):
        load_forest(forest)


def test_an_artifact_without_them_still_loads(make_artifact, tmp_path):
    path = make_artifact(tmp_path / "m")
    manifest = json.loads((path / art.MANIFEST_FILE).read_text())
    manifest["files"].pop(FOREST_FILE)
    (path / FOREST_FILE).unlink()
    (path / art.MANIFEST_FILE).write_text(json.dumps(manifest))
    a = art.load_artifact(path)
    assert a.embedder_folder is None and a.forest_path is None
    from oirl_fast.scoring.scorer import Scorer

    assert Scorer.for_artifact(a).route == "kernel"  # read through treelite, as before
