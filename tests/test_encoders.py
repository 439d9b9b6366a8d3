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


# texts the piece-splitting fast path must hand to the tokenizer whole, or handle as model2vec does
EDGE_TEXTS = [
    "", " ", "\t\n\r", "??!!", "#####", "[UNK]", "a [unk] b [PAD] c", "x[UNK]y", "[UNK] [UNK]", "[MASK] [CLS] [SEP]",
    "zzqx qqqzv xkcdw", "x" * 101, "y" * 100 + " ok", "a" * 5000, "word " * 2000, "caf\u00e9 na\u00efve \u00c5ngstr\u00f6m",
    "\u4e2d\u6587 text", "emoji \U0001F600 ok", "\x00nul", "\x0bvt\x0cff\x1fus", "line\u2028sep", "\u00a0nbsp",
    "\u0301", "\ufffd", "a\u200bb", "\u00dcn\u00efc\u00f6d\u00e9 " * 700, "tab\tsep\rcr\nlf", "It costs $3.50 (or 35%)!",
    "\u201cquoted\u201d \u2014 dash", "MiXeD CaSe 12abc 3.0e5",
]


@pytest.mark.slow
def test_static_encode_is_model2vec_bit_for_bit(static_cache, monkeypatch):
    """The fast path (texts split at whitespace, each piece tokenized once, a compiled sum) gives
    StaticModel.encode's vectors exactly: on every bundled GSM8K question, across batch
    boundaries, with the piece memory cleared mid-run, and on texts it must hand over whole."""
    from oirl_fast.collect.published import import_published

    enc = encoders.make_encoder("static", static_cache)
    assert enc._fast and enc._vocab  # no per-token weights or vocabulary mapping; a BERT WordPiece tokenizer
    questions = sorted(set(import_published("gsm8k").column("query").to_pylist()))
    rng = np.random.default_rng(0)
    ascii_chars = np.array([chr(c) for c in range(32, 127)] + ["\t", "\n", "\r"])
    fuzz = ["".join(rng.choice(ascii_chars, size=rng.integers(0, 80))) for _ in range(1500)]
    fuzz += ["".join(rng.choice(list("ab1 .,-'#[]UNK"), size=rng.integers(0, 200))) for _ in range(500)]
    # unicode the normalizer changes (accents, case, CJK, spaces, controls, combining marks, final sigma)
    uni = np.array(list("aAzZ09 .,'-#\t\n\r\x01\x7f\x0b\x1f\x85\xa0\u00e9\u00c9\u0301\u03a3\u03c3\u0130\u00df\u4e2d\u3000"
                        "\u2028\u200b\u2019\u201c\u20ac\u00bd\ufb01\U0001F600\ufffd"))
    split_same = np.array([c for c in uni if c not in "\x0b\x1f\x85"])  # texts that are split into pieces
    fuzz += ["".join(rng.choice(split_same, size=rng.integers(0, 60))) for _ in range(1500)]
    fuzz += ["".join(rng.choice(uni, size=rng.integers(0, 60))) for _ in range(300)]
    texts = (questions + EDGE_TEXTS + fuzz + [t.upper() for t in questions[:200]]
             + questions[:300])  # repeats: memorised pieces
    # the reference is model2vec's own loader and encode; the encoder reads the folder without model2vec
    from model2vec import StaticModel

    reference = StaticModel.from_pretrained(str(enc.folder))
    want = reference.encode(texts, use_multiprocessing=False).astype(np.float32)
    got = enc.encode(texts)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    edge = got[len(questions):]
    assert not edge[EDGE_TEXTS.index("")].any() and not edge[EDGE_TEXTS.index("[UNK] [UNK]")].any()  # no tokens: zeros

    # small batches and a piece memory that fills up and starts again: the same bits
    monkeypatch.setattr(encoders.static, "MAX_CACHED_PIECES", 500)
    small = encoders.StaticEncoder(enc.folder, batch_size=97)
    calls = []
    got = small.encode(texts, progress=calls.append)
    assert sum(calls) == len(texts) and len(small._pieces) < len(enc._pieces)  # it was cleared on the way
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    # one text at a time, as a single query would come
    for i in (0, len(questions) + EDGE_TEXTS.index("[UNK]"), len(questions) + EDGE_TEXTS.index("a" * 5000)):
        assert np.array_equal(small.encode([texts[i]])[0], want[i])
    assert small.encode([]).shape == (0, 256)

    # a tokenizer the Python WordPiece does not stand in for: every piece goes to the tokenizer
    rust_only = encoders.StaticEncoder(enc.folder)
    rust_only._vocab = None
    some = texts[:300] + EDGE_TEXTS + fuzz[::10]
    ref = reference.encode(some, use_multiprocessing=False).astype(np.float32)
    assert np.array_equal(rust_only.encode(some).view(np.uint32), ref.view(np.uint32))


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
