"""Embedders: the static build (deterministic, cached by its settings, atomic), local
sentence-transformers folders (pooling from their config), the artifact's embedder record,
and scoring that refuses vectors from another build."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from oirl_fast import encoders
from oirl_fast.cli import app
from oirl_fast.embed import Embedder
from oirl_fast.errors import OirlError

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz0123456789") + [
    "how", "many", "apples", "does", "have", "the", "answer", "is", "think", "step", "by", "let", "s", "what",
    "mary", "john", "buys", "more", "total", "cost", "?", ".", ",", "'", ":", "##s", "##ed", "##ing"]


def make_st_folder(path, pooling="mean", normalize=True, seed=0):
    """A tiny randomly initialised BERT saved as a sentence-transformers folder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True)
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).eval().save_pretrained(path)
    BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True).save_pretrained(path)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": False}))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}))
    return path


def _reference(path, texts, pooling, normalize):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for t in texts:  # one at a time: no padding at all
            enc = tok([t], return_tensors="pt", truncation=True, max_length=64)
            h = model(**enc).last_hidden_state[0]
            v = {"mean": h.mean(0), "cls": h[0], "max": h.max(0).values}[pooling]
            out.append(torch.nn.functional.normalize(v, dim=0) if normalize else v)
    return torch.stack(out).numpy()


TEXTS = ["how many apples does mary have?", "let's think step by step.", "the answer is", "john buys 3 more apples"]


@pytest.mark.parametrize("pooling,normalize", [("mean", True), ("cls", False), ("max", True)])
def test_folder_encoder_takes_pooling_and_normalization_from_its_config(tmp_path, pooling, normalize):
    folder = make_st_folder(tmp_path / "enc", pooling, normalize)
    enc = encoders.make_encoder(str(folder), device="cpu", batch_size=3)
    assert (enc.kind, enc.dim, enc.pooling, enc.normalize) == ("folder", 32, pooling, normalize)
    v = enc.encode(TEXTS)
    assert v.dtype == np.float32 and v.shape == (4, 32)
    np.testing.assert_allclose(v, _reference(folder, TEXTS, pooling, normalize), atol=1e-5)
    norms = np.linalg.norm(v, axis=1)
    assert np.allclose(norms, 1, atol=1e-5) == normalize


def test_folder_encoder_identity_and_cache_follow_the_weights(tmp_path):
    a = encoders.make_encoder(str(make_st_folder(tmp_path / "a", seed=0)), device="cpu")
    b = encoders.make_encoder(str(make_st_folder(tmp_path / "b", seed=1)), device="cpu")
    moved = shutil.copytree(tmp_path / "a", tmp_path / "moved")
    c = encoders.make_encoder(str(moved), device="cpu")
    assert a.identity != b.identity and a.identity == c.identity  # the path is not part of the identity
    ea, eb = Embedder(tmp_path / "cache", encoder=a, progress=False), Embedder(tmp_path / "cache", encoder=b, progress=False)
    assert ea.cache.dir != eb.cache.dir
    assert not np.allclose(ea.embed(TEXTS), eb.embed(TEXTS))
    with pytest.raises(OirlError, match="weights_sha256"):
        encoders.check_same_encoder(encoders.encoder_record(a), b)


def test_bad_folders_and_specs_are_clear_errors(tmp_path):
    with pytest.raises(OirlError, match="unknown embedder"):
        encoders.make_encoder("no-such-thing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OirlError, match="no config.json"):
        encoders.make_encoder(str(tmp_path / "empty"))
    folder = make_st_folder(tmp_path / "enc")
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_sqrt_len_tokens": True}))
    with pytest.raises(OirlError, match="not supported"):
        encoders.make_encoder(str(folder))


# ------------------------------------------------------------------------------ static


@pytest.mark.slow
def test_static_build_is_deterministic_cached_and_atomic(static_cache, tmp_path, monkeypatch):
    enc = encoders.make_encoder("static", static_cache)
    assert enc.kind == "static" and enc.dim == encoders.STATIC_PCA_DIMS
    v = enc.encode(TEXTS)
    assert v.dtype == np.float32 and v.shape == (4, 256)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)
    # no temporary folder is left beside the build
    assert [p.name for p in (static_cache / "encoders").iterdir()] == [enc.folder.name]

    # a second, independent build gives the same weights
    again = encoders.make_encoder("static", tmp_path / "other")
    assert again.weights_sha256 == enc.weights_sha256 and again.identity == enc.identity
    np.testing.assert_array_equal(again.encode(TEXTS), v)

    # built once: a later use does not distill
    def no_distill(*a, **k):
        raise AssertionError("distilled again")

    monkeypatch.setattr("model2vec.distill.distill", no_distill)
    assert encoders.make_encoder("static", static_cache).weights_sha256 == enc.weights_sha256


# texts the word table must hand to the tokenizer whole, or split as the tokenizer does
EDGE_TEXTS = [
    "", " ", "\t\n\r", "??!!", "#####", "[UNK]", "a [unk] b [PAD] c", "x[UNK]y", "[UNK] [UNK]", "[MASK] [CLS] [SEP]",
    "zzqx qqqzv xkcdw", "x" * 101, "y" * 100 + " ok", "a" * 5000, "word " * 2000, "caf\u00e9 na\u00efve \u00c5ngstr\u00f6m",
    "\u4e2d\u6587 text", "emoji \U0001F600 ok", "\x00nul", "\x0bvt\x0cff\x1fus", "line\u2028sep", "\u00a0nbsp",
    "\u0301", "\ufffd", "a\u200bb", "\u00dcn\u00efc\u00f6d\u00e9 " * 700, "tab\tsep\rcr\nlf", "It costs $3.50 (or 35%)!",
    "\u201cquoted\u201d \u2014 dash", "MiXeD CaSe 12abc 3.0e5", "a\x01b c\x7fd", "x\x85y", "\u00e9" * 3100,
]


def _fuzz_texts(rng) -> list[str]:
    """Random ASCII (printable, spaces, controls) and unicode the normalizer changes (accents, case, CJK,
    spaces, controls, combining marks, final sigma)."""
    ascii_chars = np.array([chr(c) for c in range(32, 127)] + ["\t", "\n", "\r", "\x01", "\x0b", "\x1f", "\x7f"])
    fuzz = ["".join(rng.choice(ascii_chars, size=rng.integers(0, 80))) for _ in range(1500)]
    fuzz += ["".join(rng.choice(list("ab1 .,-'#[]UNK"), size=rng.integers(0, 200))) for _ in range(500)]
    uni = np.array(list("aAzZ09 .,'-#\t\n\r\x01\x7f\x0b\x1f\x85\xa0\u00e9\u00c9\u0301\u03a3\u03c3\u0130\u00df\u4e2d\u3000"
                        "\u2028\u200b\u2019\u201c\u20ac\u00bd\ufb01\U0001F600\ufffd"))
    return fuzz + ["".join(rng.choice(uni, size=rng.integers(0, 60))) for _ in range(1800)]


@pytest.mark.slow
def test_static_encode_is_model2vec_bit_for_bit(static_cache, monkeypatch):
    """The fast path (texts split into words in compiled code, each word tokenized once by the
    model's tokenizer, compiled sums and pooling) gives StaticModel.encode's vectors exactly: on
    every bundled GSM8K question, on the same questions with their numbers redrawn, across batch
    boundaries, with the word memory cleared mid-run, on texts it must hand over whole, and on any
    number of threads."""
    import random
    import re

    from oirl_fast.collect.published import import_published

    enc = encoders.make_encoder("static", static_cache)
    assert enc._fast and enc._words is not None  # no per-token weights or vocabulary mapping; BERT's tokenizer
    questions = sorted(set(import_published("gsm8k").column("query").to_pylist()))
    rng = np.random.default_rng(0)
    draw = random.Random(0)
    redrawn = [re.sub(r"\d+", lambda m: str(draw.randrange(10 ** len(m.group()))), q) for q in questions[:2000]]
    texts = (questions + EDGE_TEXTS + _fuzz_texts(rng) + [t.upper() for t in questions[:200]] + redrawn
             + questions[:300])  # repeats: remembered words
    # the reference is model2vec's own loader and encode; the encoder reads the folder without model2vec
    from model2vec import StaticModel

    reference = StaticModel.from_pretrained(str(enc.folder))
    want = reference.encode(texts, use_multiprocessing=False).astype(np.float32)
    got = enc.encode(texts)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    edge = got[len(questions):]
    assert not edge[EDGE_TEXTS.index("")].any() and not edge[EDGE_TEXTS.index("[UNK] [UNK]")].any()  # no tokens: zeros

    # small batches, one to three threads, and a word memory that fills up and starts again: the same bits
    monkeypatch.setattr("oirl_fast.encoders.words.MAX_WORDS", 500)
    for threads, batch in ((1, 97), (2, 1000), (3, 4096)):
        small = encoders.StaticEncoder(enc.folder, batch_size=batch, threads=threads)
        calls = []
        got = small.encode(texts, progress=calls.append)
        assert sum(calls) == len(texts) and len(small._words) < len(enc._words)  # it was cleared on the way
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    # one text at a time, as a single query would come
    for i in (0, len(questions) + EDGE_TEXTS.index("[UNK]"), len(questions) + EDGE_TEXTS.index("a" * 5000)):
        assert np.array_equal(small.encode([texts[i]])[0], want[i])
    assert small.encode([]).shape == (0, 256)

    # a tokenizer the word table does not stand in for: every text goes to the tokenizer whole
    whole = encoders.StaticEncoder(enc.folder)
    whole._words = None
    some = texts[:300] + EDGE_TEXTS + texts[len(questions) + len(EDGE_TEXTS)::10]
    ref = reference.encode(some, use_multiprocessing=False).astype(np.float32)
    assert np.array_equal(whole.encode(some).view(np.uint32), ref.view(np.uint32))


def test_static_threads_are_checked(static_cache):
    enc = encoders.make_encoder("static", static_cache, threads=2)
    assert enc.threads == 2
    for bad in (0, -1, 1.5, True):
        enc.threads = bad
        with pytest.raises(OirlError, match="threads"):
            enc.encode(["a question"])


_FORKED: dict = {}


def _encode_in_child(texts):
    return _FORKED["enc"].encode(texts)


def test_static_encoder_encodes_in_a_forked_child(static_cache):
    """A worker forked after the encoder started its threads (Dask, multiprocessing) gets threads of its own."""
    import multiprocessing

    enc = _FORKED["enc"] = encoders.make_encoder("static", static_cache, threads=2)
    texts = [f"john buys {i} apples and {i % 7} pears" for i in range(300)]
    want = enc.encode(texts)  # the thread pool exists now
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(_encode_in_child, (texts,)).get(timeout=120)  # a hang fails here
    assert np.array_equal(got, want)


def test_half_rounding_is_numpys():
    """The compiled float64 -> float16 rounding (ties to even, float16 subnormals, overflow) gives
    numpy's cast on every float16 value, the midpoints between neighbours and the values around them."""
    from oirl_fast.encoders.words import _mean_rows

    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    h = np.sort(halves[np.isfinite(halves)].astype(np.float32))
    mids = (h[1:] + h[:-1]) / np.float32(2)  # exact in float32: the ties
    rng = np.random.default_rng(0)
    wide = (rng.standard_normal(100_000) * 10.0 ** rng.integers(-9, 6, 100_000)).astype(np.float32)
    x = np.concatenate([h, mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf)),
                        np.array([65519.99, 65520.0, -7e4, 3e38, -0.0, 1e-45, np.inf, -np.inf], np.float32), wide])
    sums = np.resize(x, (-(-len(x) // 256), 256))  # rows of 256, the last one padded by repetition
    counts = np.ones(len(sums), dtype=np.int64)
    out = np.empty_like(sums)
    for count in (1, 3):  # 3: a division that rounds
        counts[:] = count
        _mean_rows(sums, counts, 0, len(sums), True, out)
        with np.errstate(over="ignore"):
            want = (sums / counts[:, None]).astype(np.float16).astype(np.float32)
        assert np.array_equal(out.view(np.uint32), want.view(np.uint32))


def test_static_build_is_keyed_by_its_settings(monkeypatch, tmp_path):
    base = encoders.static_settings()
    assert base["pca_dims"] == 256 and base["model2vec"] and base["base"] == encoders.MINILM_ID
    dirs = {encoders.static_model_dir(tmp_path, {**base, **change}) for change in
            ({}, {"pca_dims": 128}, {"model2vec": "0.0.1"}, {"base_package": "9"})}
    assert len(dirs) == 4


def _mawps_small_log(mawps_small, tmp_path, n_groups=120):
    groups = sorted(set(mawps_small.column("group").to_pylist()))[:n_groups]
    table = mawps_small.filter(pc.is_in(mawps_small.column("group"), pa.array(groups)))
    from oirl_fast.schema import write_logs

    path = tmp_path / "log.parquet"
    write_logs(table, path)
    return path, table


def _queries(path, table, n=30):
    qs = sorted(set(table.column("query").to_pylist()))[:n]
    path.write_text("".join(json.dumps({"id": f"q{i}", "query": q}) + "\n" for i, q in enumerate(qs)))
    return qs


@pytest.mark.slow
def test_static_model_records_its_build_and_refuses_another(static_cache, mawps_small, tmp_path):
    log, table = _mawps_small_log(mawps_small, tmp_path)
    runner = CliRunner()
    model = tmp_path / "model"
    res = runner.invoke(app, ["train", str(log), "--out", str(model), "--no-compile", "--n-estimators", "20",
                              "--cache-dir", str(static_cache)])  # --embedder static is the default
    assert res.exit_code == 0, res.output
    meta = json.loads((model / "metadata.json").read_text())
    enc = encoders.make_encoder("static", static_cache)
    rec = meta["embedder"]
    assert rec["kind"] == "static" and rec["dim"] == 256 and rec["weights_sha256"] == enc.weights_sha256
    assert rec["identity"] == enc.identity
    assert meta["feature_layout"]["query_dim"] == meta["feature_layout"]["prompt_dim"] == 256

    inp = tmp_path / "q.jsonl"
    _queries(inp, table)
    res = runner.invoke(app, ["score", str(model), "--in", str(inp), "--out", str(tmp_path / "p.jsonl"),
                              "--cache-dir", str(static_cache)])
    assert res.exit_code == 0, res.output
    picks = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(picks) == 30 and all(p["prompt_id"] in [q["id"] for q in meta["prompts"]] for p in picks)
    # the queries did not go into the cache: static re-embeds faster than it looks up
    assert not (static_cache / "embeddings" / enc.cache_name).exists() or all(
        "q0" not in p.name for p in (static_cache / "embeddings" / enc.cache_name).iterdir())

    # another static build (here: the same folder with its weights changed) is refused, one line, exit 2
    other = tmp_path / "other-cache"
    shutil.copytree(static_cache / "encoders", other / "encoders")
    folder = next((other / "encoders").iterdir())
    from model2vec import StaticModel

    m = StaticModel.from_pretrained(str(folder))
    m.embedding = (np.asarray(m.embedding) * 1.01).astype(np.asarray(m.embedding).dtype)
    m.save_pretrained(str(folder))
    settings = json.loads((folder / "settings.json").read_text())
    settings["weights_sha256"] = encoders._array_sha256(np.ascontiguousarray(np.asarray(m.embedding)))
    settings["files_sha256"] = encoders.static_files_sha256(folder)  # a consistent build, not a damaged one
    (folder / "settings.json").write_text(json.dumps(settings))
    # the model carries the build it was trained with: the other build in the cache changes nothing
    assert (model / "embedder" / "settings.json").is_file()
    res = runner.invoke(app, ["score", str(model), "--in", str(inp), "--out", str(tmp_path / "p2.jsonl"),
                              "--cache-dir", str(other)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p2.jsonl").read_bytes() == (tmp_path / "p.jsonl").read_bytes()

    # a model without it (written before artifacts carried their embedder) uses the cache's build and refuses
    # another one, one line, exit 2
    legacy = tmp_path / "legacy"
    shutil.copytree(model, legacy)
    shutil.rmtree(legacy / "embedder")
    manifest = json.loads((legacy / "manifest.json").read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("embedder/")}
    (legacy / "manifest.json").write_text(json.dumps(manifest))
    res = runner.invoke(app, ["score", str(legacy), "--in", str(inp), "--out", str(tmp_path / "p3.jsonl"),
                              "--cache-dir", str(other)])
    assert res.exit_code == 2
    msg = " ".join(res.output.split())
    assert "another static embedder build" in msg and "weights_sha256" in msg and "oirl train" in msg
    assert not (tmp_path / "p3.jsonl").exists()
    # evaluate uses the artifact's embedder too, and refuses the other build
    res = runner.invoke(app, ["evaluate", str(legacy), str(log), "--seeds", "1", "--cache-dir", str(other)])
    assert res.exit_code == 2 and "another static embedder build" in " ".join(res.output.split())


@pytest.mark.slow
def test_folder_encoder_end_to_end_train_then_score(mawps_small, tmp_path):
    folder = make_st_folder(tmp_path / "my-encoder", "cls", True)
    log, table = _mawps_small_log(mawps_small, tmp_path, n_groups=80)
    runner = CliRunner()
    model, cache = tmp_path / "model", tmp_path / "cache"
    res = runner.invoke(app, ["train", str(log), "--out", str(model), "--no-compile", "--n-estimators", "10",
                              "--embedder", str(folder), "--cache-dir", str(cache), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    meta = json.loads((model / "metadata.json").read_text())
    assert meta["embedder"]["kind"] == "folder" and meta["embedder"]["dim"] == 32
    assert meta["embedder"]["identity"]["pooling"] == "cls" and meta["embedder"]["path"] == str(folder.resolve())
    assert meta["feature_layout"]["query_dim"] == 32

    inp = tmp_path / "q.jsonl"
    qs = _queries(inp, table, 12)
    out = tmp_path / "picks.jsonl"
    res = runner.invoke(app, ["score", str(model), "--in", str(inp), "--out", str(out), "--cache-dir", str(cache)])
    assert res.exit_code == 0, res.output
    picks = [json.loads(x) for x in out.read_text().splitlines()]
    assert [p["id"] for p in picks] == [f"q{i}" for i in range(len(qs))] and all("prompt_id" in p for p in picks)

    # the pick equals the model's own prediction on the folder encoder's vectors
    from oirl_fast.features import grid_features
    from oirl_fast.train.artifact import load_artifact

    art = load_artifact(model)
    q = encoders.make_encoder(str(folder), device="cpu").encode(qs)
    scores = art.model.predict(grid_features(q, art.prompt_embeddings)).reshape(len(qs), -1)
    assert [p["prompt_id"] for p in picks] == [art.metadata.prompt_ids[i] for i in scores.argmax(axis=1)]

    # moved folder: refused with the fix, then accepted with --embedder NEWPATH; another encoder refused
    moved = tmp_path / "moved-encoder"
    folder.rename(moved)
    res = runner.invoke(app, ["score", str(model), "--in", str(inp), "--out", str(tmp_path / "m.jsonl")])
    assert res.exit_code == 2 and "--embedder" in res.output
    res = runner.invoke(app, ["score", str(model), "--in", str(inp), "--out", str(tmp_path / "m.jsonl"),
                              "--embedder", str(moved), "--cache-dir", str(cache)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m.jsonl").read_bytes() == out.read_bytes()
    other = make_st_folder(tmp_path / "other", "cls", True, seed=5)
    res = runner.invoke(app, ["score", str(model), "--in", str(inp), "--out", str(tmp_path / "o.jsonl"),
                              "--embedder", str(other)])
    assert res.exit_code == 2 and "weights_sha256" in " ".join(res.output.split())


def test_artifact_without_embedder_record_means_minilm(make_artifact, tmp_path):
    from oirl_fast.train.artifact import load_artifact

    path = make_artifact(tmp_path / "m")
    meta = json.loads((path / "metadata.json").read_text())
    assert meta.get("embedder") is None
    rec = load_artifact(path).metadata.embedder_record
    assert rec["kind"] == "minilm" and rec["dim"] == 384 and rec["identity"] == encoders.MiniLMEncoder().identity
