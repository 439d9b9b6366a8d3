"""The near-duplicate vote travels with a model: `oirl train --fallback-margin vote` writes neighbours.npz
(checksummed, verified on load), and `oirl score` (local and Dask, byte-identical) and `Model.pick` apply it:
a new templated variant of a training question gets the prompt that won on its template, any other query
the best fixed prompt."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

import oirl_fast as oirl
from oirl_fast.cli import app
from oirl_fast.reranking.fallback import NEIGHBOURS_FILE, promote
from oirl_fast.reranking.neighbours import unit_rows
from oirl_fast.schema import write_logs

runner = CliRunner()
N_FAMILIES, VARIANTS = 30, 10


def _variant(base: str, v: int) -> str:
    return f"{base} (Case {v}.)"


@pytest.fixture(scope="module")
def vote_model(tmp_path_factory, mawps_small, mawps_log, static_cache):
    """mawps_small's 300 questions rewritten as 30 template families of 10 variants (a dissimilar real MAWPS
    question plus a case number), the outcomes redrawn: on each family one training prompt is right 95% of the
    time, the fixed prompt (CoT) 60%, the others 30%. Trained with --fallback-margin vote."""
    from oirl_fast.embed import Embedder
    from oirl_fast.encoders import make_encoder

    emb = Embedder(cache_dir=static_cache, progress=False, encoder=make_encoder("static", static_cache, "cpu"))
    pool = sorted(set(mawps_log.column("query").to_pylist()))
    vec = unit_rows(emb.embed(pool))
    bases, others = [], []
    for i in np.random.default_rng(0).permutation(len(pool)):  # greedy: bases pairwise below cosine 0.8
        if not bases or (vec[bases] @ vec[i]).max() < 0.8:
            (bases if len(bases) < N_FAMILIES else others).append(i)
        if len(others) == 20:
            break
    base_texts = [pool[i] for i in bases]
    queries = mawps_small.column("query").to_pylist()
    uq = sorted(set(queries))
    text_of = {q: _variant(base_texts[k // VARIANTS], k % VARIANTS) for k, q in enumerate(uq)}
    family = {q: k // VARIANTS for k, q in enumerate(uq)}
    pid = np.asarray(mawps_small.column("prompt_id").to_pylist(), dtype=object)
    split = mawps_small.column("split").to_pylist()
    train_ids = sorted({q for q, s in zip(pid, split) if s == "train"} - {"CoT"})
    assert len(train_ids) == 5
    rng = np.random.default_rng(1)
    winner = rng.choice(train_ids + ["CoT"] * 2, size=N_FAMILIES)
    fam = np.array([family[q] for q in queries])
    p = np.where(pid == winner[fam], 0.95, np.where(pid == "CoT", 0.6, 0.3))
    t = mawps_small
    for name, col in (("query", pa.array([text_of[q] for q in queries], pa.string())),
                      ("group", pa.array([text_of[q].lower() for q in queries], pa.string())),
                      ("correct", pa.array(rng.random(len(pid)) < p, pa.bool_()))):
        i = t.schema.get_field_index(name)
        t = t.set_column(i, t.schema.field(i), col)
    folder = tmp_path_factory.mktemp("vote")
    write_logs(t, folder / "log.parquet")
    res = runner.invoke(app, ["train", str(folder / "log.parquet"), "--out", str(folder / "model"), "--no-compile",
                              "--n-estimators", "40", "--fallback-margin", "vote", "--cache-dir", str(static_cache)])
    assert res.exit_code == 0, res.output
    # new variants of every family (never logged), then unrelated real questions
    new = [(_variant(b, 99), str(w)) for b, w in zip(base_texts, winner)]
    unrelated = [pool[i] for i in others]
    qfile = folder / "queries.jsonl"
    qfile.write_text("".join(json.dumps({"id": str(k), "query": q}) + "\n"
                             for k, q in enumerate([q for q, _ in new] + unrelated)))
    return folder / "model", qfile, new, unrelated


def test_train_writes_the_vote_and_score_applies_it(vote_model, tmp_path, static_cache):
    model, qfile, new, unrelated = vote_model
    meta = json.loads((model / "metadata.json").read_text())
    fb = meta["fallback"]
    assert fb["prompt_id"] == "CoT" and fb["margin"] is None
    vote = fb["vote"]
    assert vote["cosine"] is not None and vote["file"] == NEIGHBOURS_FILE and vote["inner_gain"] > 0.05
    assert NEIGHBOURS_FILE in json.loads((model / "manifest.json").read_text())["files"]
    # the families share their text up to the case number: the table carries the template directions
    with np.load(model / NEIGHBOURS_FILE) as z:
        assert z["template_basis"].dtype == np.float32 and z["template_basis"].shape[1] == z["vectors"].shape[1]
        assert len(z["template_basis"]) == vote["template_rank"] > 0
    res = runner.invoke(app, ["score", str(model), "--in", str(qfile), "--out", str(tmp_path / "p.jsonl"),
                              "--top-k", "2", "--scores", "--cache-dir", str(static_cache)])
    assert res.exit_code == 0, res.output
    picks = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    got_new = [p["prompt_id"] for p in picks[:len(new)]]
    assert np.mean([g == w for g, (_, w) in zip(got_new, new)]) >= 0.9  # the family's winner
    assert sum(g != "CoT" for g in got_new) >= 10
    assert all(p["prompt_id"] == "CoT" for p in picks[len(new):])  # no near-duplicate: the fixed prompt
    for p in picks:  # the listed score is the model's score of the prompt put first
        assert p["score"] == pytest.approx(p["scores"][p["prompt_id"]])
        assert p["top_k"][0]["prompt_id"] == p["prompt_id"] and len(p["top_k"]) == 2
    api = oirl.load(model, cache_dir=static_cache).pick([q for q, _ in new] + unrelated, top_k=2)
    assert list(api.ids[:, 0]) == [p["prompt_id"] for p in picks]
    assert list(api.ids[:, 1]) == [p["top_k"][1]["prompt_id"] for p in picks]


def test_score_dask_is_byte_identical(vote_model, tmp_path, static_cache):
    from distributed import Client

    from oirl_fast import cluster as dask_cluster

    model, qfile, _, _ = vote_model
    local, dist = tmp_path / "local.jsonl", tmp_path / "dask.jsonl"
    res = runner.invoke(app, ["score", str(model), "--in", str(qfile), "--out", str(local), "--cache-dir",
                              str(static_cache)])
    assert res.exit_code == 0, res.output
    with dask_cluster.local_cluster(2) as cluster, Client(cluster) as client:
        res = runner.invoke(app, ["score", str(model), "--in", str(qfile), "--out", str(dist), "--engine", "dask",
                                  "--scheduler", client.scheduler.address, "--partitions", "3", "--cache-dir",
                                  str(static_cache)])
    assert res.exit_code == 0, res.output
    assert local.read_bytes() == dist.read_bytes()


def test_a_changed_neighbour_table_is_refused(vote_model, tmp_path):
    import shutil

    model, qfile, _, _ = vote_model
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    with np.load(copy / NEIGHBOURS_FILE) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["wins"][0, 0] += 1
    np.savez(copy / NEIGHBOURS_FILE, **arrays)
    res = runner.invoke(app, ["score", str(copy), "--in", str(qfile), "--out", str(tmp_path / "p.jsonl")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "neighbours.npz" in res.output and "checksum" in res.output


def test_promote_moves_the_target_first():
    idx = np.array([[2, 0, 1], [1, 2, 0]])
    sc = np.array([[0.9, 0.5, 0.1], [0.6, 0.55, 0.2]])
    new_idx, new_sc = promote(idx, sc, np.array([1, 1]), np.array([0.1, 0.6]))
    assert new_idx.tolist() == [[1, 2, 0], [1, 2, 0]] and new_sc[0].tolist() == [0.1, 0.9, 0.5]
    new_idx, new_sc = promote(idx, sc, np.array([3, 2]), np.array([0.05, 0.55]))  # 3 was not listed: last drops
    assert new_idx.tolist() == [[3, 2, 0], [2, 1, 0]]
