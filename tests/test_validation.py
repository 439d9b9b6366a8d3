"""Issue 10, classes 2 and 3: every bad input or parameter is one line naming the file and exit 2,
checked before the long work; nothing silently wrong (leakage against the model's own training
questions, the same rules for Parquet and JSONL, --embeddings dtypes, empty queries, literal text)."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from oirl_fast.cli import app
from oirl_fast.errors import OirlError
from oirl_fast.schema import conform, read_logs, write_logs
from oirl_fast.train.reward_model import TrainConfig

runner = CliRunner()
D = 384


def run(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def synthetic_log(cache_dir, questions=range(200), n_prompts=4, repeats=2, correct=None, split_at=None, seed=0):
    """A log over questions ``synthetic question {i}`` whose outcomes depend on random unit embeddings,
    which go into ``cache_dir``'s embedding cache, so nothing runs the text model. The same i always
    gets the same text and vector. ``correct``: force every verdict; ``split_at``: rows of questions
    below it are split "train", the others "test"."""
    from oirl_fast.embed import EmbeddingCache, text_key

    questions = list(questions)
    qt = [f"synthetic question {i}" for i in questions]
    pt = [f"synthetic prompt {j}" for j in range(n_prompts)]
    q = np.stack([np.random.default_rng(1000 + i).normal(size=D) for i in questions]).astype(np.float32)
    pe = np.random.default_rng(7).normal(size=(n_prompts, D)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    pe /= np.linalg.norm(pe, axis=1, keepdims=True)
    EmbeddingCache(cache_dir).add([text_key(t) for t in qt + pt], np.vstack([q, pe]))
    prob = 1 / (1 + np.exp(-30 * (q[:, None, :8] * pe[None, :, :8]).sum(-1)))
    rng = np.random.default_rng(seed)
    rows = {k: [] for k in ("dataset", "query_id", "query", "gold", "prompt_id", "prompt", "correct", "split")}
    for k, i in enumerate(questions):
        for r in range(repeats):
            for j in range(n_prompts):
                rows["dataset"].append("synthetic")
                rows["query_id"].append(f"q{i}-{r}")
                rows["query"].append(qt[k])
                rows["gold"].append("0")
                rows["prompt_id"].append(f"p{j}")
                rows["prompt"].append(pt[j])
                rows["correct"].append(bool(rng.random() < prob[k, j]) if correct is None else correct)
                rows["split"].append(None if split_at is None else ("train" if i < split_at else "test"))
    return pa.table(rows)


@pytest.fixture(scope="module")
def synth_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic-cache")


@pytest.fixture(scope="module")
def synth_model(tmp_path_factory, synth_cache):
    """(model dir, log path): a small model trained by `oirl train` on questions 0..199."""
    base = tmp_path_factory.mktemp("synthetic-model")
    log = base / "log.parquet"
    write_logs(synthetic_log(synth_cache), log)
    # minilm: the synthetic vectors are in the MiniLM cache, so nothing runs a text model
    res = run("train", str(log), "--out", str(base / "model"), "--no-compile", "--n-estimators", "20",
              "--embedder", "minilm", "--cache-dir", str(synth_cache))
    assert res.exit_code == 0, res.output
    return base / "model", log


# --------------------------------------------------------------------------------------
# Class 2: parameters and logs a model cannot be trained or evaluated on


@pytest.mark.parametrize("field, value", [
    ("n_estimators", 0), ("n_estimators", -3), ("n_estimators", 2.5), ("learning_rate", 0.0),
    ("learning_rate", -0.1), ("learning_rate", float("nan")), ("learning_rate", float("inf")),
    ("learning_rate", 1e308), ("colsample", 0.0), ("subsample", 1.5), ("valid_fraction", 0.0),
    ("early_stopping_rounds", 0), ("nthread", 0), ("num_leaves", 1), ("min_child_weight", float("nan")),
])
def test_train_config_refuses_values_no_fit_can_use(field, value):
    with pytest.raises(OirlError, match=field.replace("_", "-")):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("args, message", [
    (["--learning-rate", "inf"], "learning-rate must be a finite number in (0.0, 1.0], got inf"),
    (["--learning-rate", "nan"], "learning-rate must be a finite number"),
    (["--learning-rate", "0"], "learning-rate must be"),
    (["--n-estimators", "0"], "n-estimators must be an integer >= 1, got 0"),
    (["--test-fraction", "nan"], "test fraction must be in (0, 1)"),
    (["--test-fraction", "1"], "test fraction must be in (0, 1)"),
])
def test_cli_train_refuses_bad_parameters_before_reading_the_log(tmp_path, args, message):
    # The log does not exist: the parameters are checked first, so that is not what is reported.
    res = run("train", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "m"), *args)
    assert res.exit_code == 2, res.output
    assert message in res.stderr and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("correct, verdict", [(True, "correct"), (False, "wrong")])
def test_train_refuses_a_log_of_one_outcome(tmp_path, synth_cache, correct, verdict):
    log = tmp_path / "one-outcome.parquet"
    write_logs(synthetic_log(synth_cache, correct=correct), log)
    res = run("train", str(log), "--out", str(tmp_path / "m"), "--no-compile", "--cache-dir", str(synth_cache))
    assert res.exit_code == 2
    assert res.stderr.startswith(f"error: {log}: every one of the") and f"training rows is {verdict}" in res.stderr
    assert not (tmp_path / "m").exists()


def test_train_refuses_a_single_prompt_and_too_few_rows(tmp_path, synth_cache):
    one = tmp_path / "one-prompt.parquet"
    write_logs(synthetic_log(synth_cache, n_prompts=1), one)
    res = run("train", str(one), "--out", str(tmp_path / "m"), "--cache-dir", str(synth_cache))
    assert res.exit_code == 2 and f"{one}: the log has 1 prompt ('p0'); choosing a prompt needs at least 2" in res.stderr
    tiny = tmp_path / "tiny.parquet"
    write_logs(synthetic_log(synth_cache, questions=range(2), repeats=1), tiny)
    res = run("train", str(tiny), "--out", str(tmp_path / "m"), "--cache-dir", str(synth_cache))
    assert res.exit_code == 2 and f"{tiny}: protocol 'grouped' leaves an empty train or test set" in res.stderr
    res = run("train", str(tiny), "--out", str(tmp_path / "m"), "--test-fraction", "0.5", "--cache-dir",
              str(synth_cache))  # one test question, one training question: none left for early stopping
    assert res.exit_code == 2 and f"{tiny}: the protocol's training side has 1 question(s)" in res.stderr
    assert not (tmp_path / "m").exists()


def test_distributed_training_gets_the_same_log_checks(tmp_path, synth_cache):
    from oirl_fast.encoders import EncoderSettings
    from oirl_fast.train.dask_fit import DaskTraining, train_distributed
    from oirl_fast.splits import Protocol

    log = tmp_path / "one-outcome.parquet"
    write_logs(synthetic_log(synth_cache, correct=True), log)
    # Refused while reading the log, before a cluster is started (client=None would start one).
    with pytest.raises(OirlError, match="training rows is correct") as exc:
        train_distributed(log, Protocol(), TrainConfig(), tmp_path / "m",
                          cluster=DaskTraining(encoder=EncoderSettings(cache_dir=synth_cache)))
    assert exc.value.path == str(log)


def test_evaluate_refuses_test_rows_of_one_outcome(tmp_path, synth_model, synth_cache):
    model, _ = synth_model
    log = tmp_path / "all-right.parquet"
    write_logs(synthetic_log(synth_cache, correct=True), log)
    res = run("evaluate", str(model), str(log), "--cache-dir", str(synth_cache), "--seeds", "1")
    assert res.exit_code == 2
    assert f"{log}: every one of the" in res.stderr and "test rows is correct" in res.stderr


def test_evaluate_refuses_test_questions_without_the_heldout_prompts(tmp_path, synth_cache):
    """p3 is held out (never on a train row) and logged only under query ids of its own, so no test
    query has every prompt: the bootstrap used to get empty arrays."""
    table = synthetic_log(synth_cache, repeats=1, split_at=150)
    split = np.asarray(table.column("split").to_pylist())
    pid = np.asarray(table.column("prompt_id").to_pylist())
    table = table.filter(pa.array(~((split == "train") & (pid == "p3"))))
    qid = [q + "-p3" if p == "p3" else q for q, p in zip(table.column("query_id").to_pylist(),
                                                         table.column("prompt_id").to_pylist())]
    table = table.set_column(table.schema.get_field_index("query_id"), "query_id", pa.array(qid))
    log = tmp_path / "log.parquet"
    write_logs(table, log)
    res = run("train", str(log), "--out", str(tmp_path / "m"), "--protocol", "published", "--no-compile",
              "--n-estimators", "10", "--embedder", "minilm", "--cache-dir", str(synth_cache))
    assert res.exit_code == 0, res.output
    res = run("evaluate", str(tmp_path / "m"), str(log), "--cache-dir", str(synth_cache), "--seeds", "3")
    assert res.exit_code == 2, res.output
    assert (f"{log}: none of the 100 test questions of protocol 'published' was logged with all 4 prompts"
            in res.stderr), res.stderr


# --------------------------------------------------------------------------------------
# Class 3: leakage is measured against the questions the model was trained on


def test_evaluate_counts_the_models_training_questions_in_another_log(tmp_path, synth_model, synth_cache):
    from oirl_fast.embed import Embedder
    from oirl_fast.evaluation import evaluate
    from oirl_fast.splits import split_log
    from oirl_fast.splits import Protocol
    from oirl_fast.train.artifact import load_artifact

    model_dir, train_log = synth_model
    artifact = load_artifact(model_dir)
    protocol = Protocol(**artifact.metadata.protocol)
    trained_on = set(split_log(read_logs(train_log), protocol).train.column("query").to_pylist())
    assert artifact.train_questions is not None and len(artifact.train_questions) == len(trained_on)

    other = conform(synthetic_log(synth_cache, questions=range(100, 300), seed=5))  # half of it the model's log
    own = split_log(other, protocol)
    assert not set(own.train.column("group").to_pylist()) & set(own.test.column("group").to_pylist())
    test_questions = set(own.test.column("query").to_pylist())
    expected = len(test_questions & trained_on)
    assert expected > 10  # the old count, against the other log's own train split, was 0
    rep = evaluate(artifact, other, Embedder(cache_dir=synth_cache, progress=False), knn_k=5)
    assert rep["test_in_train_exact"] == expected
    # random vectors: only the exact repeats are near-duplicates
    assert rep["test_near_duplicate"] == expected
    in_log = len(trained_on & set(other.column("query").to_pylist()))
    assert rep["leakage"]["model_train_questions"] == len(trained_on)
    assert rep["leakage"]["model_train_questions_in_log"] == in_log


@pytest.mark.slow
def test_mawps_model_evaluated_on_svamp_reports_its_training_questions(tmp_path, mawps_small, embedder):
    """Bundled data: MAWPS's questions reappear in SVAMP's logs. A model trained on (a subset of)
    MAWPS and evaluated on SVAMP's log must count them as seen in training."""
    from oirl_fast.collect.published import import_published
    from oirl_fast.evaluation import evaluate
    from oirl_fast.train.fit import fit_reward_model, write_artifact
    from oirl_fast.splits import split_log
    from oirl_fast.splits import Protocol

    protocol = Protocol("grouped")
    fitted = fit_reward_model(mawps_small, protocol, TrainConfig(n_estimators=10), embedder, log=lambda s: None)
    artifact = write_artifact(fitted, tmp_path / "mawps-model", compile_library=False)
    mawps_train = set(split_log(mawps_small, protocol).train.column("group").to_pylist())

    svamp = import_published("svamp")
    shared = set(svamp.column("group").to_pylist()) & set(mawps_small.column("group").to_pylist())
    assert len(shared) > 250  # nearly all of the 300 MAWPS test questions are SVAMP questions too
    others = sorted(set(svamp.column("group").to_pylist()) - shared)[:100]
    svamp = svamp.filter(pc.is_in(svamp.column("group"), pa.array(sorted(shared) + others)))
    rep = evaluate(artifact, svamp, embedder, knn_k=5)
    svamp_test = set(split_log(svamp, protocol).test.column("group").to_pylist())
    expected = len(svamp_test & mawps_train)
    assert rep["test_in_train_exact"] == expected
    assert expected >= 0.4 * rep["n_test_queries"]
    assert rep["test_near_duplicate"] >= expected


# --------------------------------------------------------------------------------------
# Class 3: Parquet and JSONL logs follow the same rules


def _rows(n=4, **override):
    rows = [{"dataset": "d", "query_id": f"q{i // 2}", "query": f"question {i // 2}", "gold": "1",
             "prompt_id": f"p{i % 2}", "prompt": f"prompt {i % 2}", "correct": bool(i % 3)} for i in range(n)]
    for k, v in override.items():
        for r, x in zip(rows, v):
            r[k] = x
    return rows


def _write_both(tmp_path, rows, name):
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / f"{name}.parquet")
    (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / f"{name}.parquet", tmp_path / f"{name}.jsonl"


@pytest.mark.parametrize("values", [[0.7, 0.0, 1.0, 0.2], [1, 0, 1, 1]])
def test_correct_must_be_boolean_in_parquet_as_in_jsonl(tmp_path, values):
    parquet, jsonl = _write_both(tmp_path, _rows(correct=values), "numeric-correct")
    with pytest.raises(OirlError, match="'correct' must be"):
        read_logs(jsonl)
    with pytest.raises(OirlError, match=r"column 'correct' must be boolean \(true/false\), got (double|int64)") as exc:
        read_logs(parquet)
    assert exc.value.path == str(parquet)


def test_other_columns_are_typed_alike(tmp_path):
    parquet, jsonl = _write_both(tmp_path, _rows(query_id=[1, 1, 2, 2]), "int-ids")
    with pytest.raises(OirlError, match="'query_id' must be a string"):
        read_logs(jsonl)
    with pytest.raises(OirlError, match="column 'query_id' must be a string, got int64"):
        read_logs(parquet)
    parquet, jsonl = _write_both(tmp_path, _rows(sample=[0.0, 1.0, 0.0, 1.0]), "float-sample")
    with pytest.raises(OirlError, match="'sample' must be a non-negative integer"):
        read_logs(jsonl)
    with pytest.raises(OirlError, match="column 'sample' must be an integer, got double"):
        read_logs(parquet)
    # what JSONL accepts, Parquet accepts: a numeric gold, integer confidences, null optional columns
    parquet, jsonl = _write_both(tmp_path, _rows(gold=[5, 5, 7, 7], confidence=[1, 0, None, 1]), "ok")
    assert read_logs(parquet).column("gold").to_pylist() == read_logs(jsonl).column("gold").to_pylist()


@pytest.mark.parametrize("field, value, what", [("query", "another question", "query texts"),
                                                ("gold", "2", "gold answers")])
def test_a_query_id_names_one_query(tmp_path, field, value, what):
    rows = _rows()
    rows[3][field] = value  # q1 on its second row
    parquet, jsonl = _write_both(tmp_path, rows, "conflict")
    for path in (parquet, jsonl):
        with pytest.raises(OirlError, match=rf"query_id 'q1' has two different {what} \(rows 3 and 4\)") as exc:
            read_logs(path)
        assert exc.value.path == str(path)


# --------------------------------------------------------------------------------------
# Class 3: oirl score's inputs


def _ids(tmp_path, n):
    path = tmp_path / "ids.txt"
    path.write_text("".join(f"q{i}\n" for i in range(n)))
    return path


def test_embeddings_dtype_rule(tmp_path, make_artifact, real_pairs):
    from oirl_fast.scoring.stream import score_file

    model = make_artifact(tmp_path / "model")
    X, _ = real_pairs
    q32 = np.ascontiguousarray(X[:40, :D])
    ids = _ids(tmp_path, 40)

    def picks(arr, name):
        np.save(tmp_path / f"{name}.npy", arr)
        out = tmp_path / f"{name}.jsonl"
        score_file(model, None, out, embeddings=tmp_path / f"{name}.npy", ids=ids, progress=False, with_scores=True)
        return [json.loads(x) for x in out.read_text().splitlines()]

    base = picks(q32, "f32")
    assert picks(q32.astype(np.float64), "f64") == base  # float32 values held in float64: exactly the same
    half = q32.astype(np.float16)
    assert picks(half, "f16") == picks(half.astype(np.float32), "f16as32")  # float16 converts exactly
    wide = q32.astype(np.float64)
    wide[3, 0] = 1e300  # beyond float32's range: that row is an error record, the others are scored
    recs = picks(wide, "wide")
    assert "infinity" in recs[3]["error"] and [r for i, r in enumerate(recs) if i != 3] == base[:3] + base[4:]
    for bad in (np.ones((40, D), np.int32), np.ones((40, D), np.bool_), np.ones((40, D), np.complex64)):
        np.save(tmp_path / "bad.npy", bad)
        with pytest.raises(OirlError, match="embeddings must be float32") as exc:
            score_file(model, None, tmp_path / "bad.jsonl", embeddings=tmp_path / "bad.npy", ids=ids, progress=False)
        assert exc.value.path == str(tmp_path / "bad.npy") and not (tmp_path / "bad.jsonl").exists()


def test_empty_query_is_an_error_record(tmp_path, make_artifact, embedder):
    from oirl_fast.scoring.stream import score_file

    model = make_artifact(tmp_path / "model")
    inp = tmp_path / "q.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": 1, "query": "How many apples are left?"}, {"id": 2, "query": ""}, {"id": 3, "query": " \t\u3000 "},
    ]))
    summary = score_file(model, inp, tmp_path / "o.jsonl", progress=False, embedder_factory=lambda cached: embedder)
    recs = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert "prompt_id" in recs[0] and summary.scored == 1 and summary.errors == 2
    for rec in recs[1:]:
        assert rec["error"] == '"query" is empty or only whitespace' and "prompt_id" not in rec
    with pytest.raises(OirlError, match="empty or only whitespace") as exc:
        score_file(model, inp, tmp_path / "s.jsonl", progress=False, strict=True,
                   embedder_factory=lambda cached: embedder)
    assert exc.value.line == 2


# --------------------------------------------------------------------------------------
# Class 3: user text is printed literally


def test_user_text_is_printed_literally_in_errors(tmp_path):
    name = tmp_path / "[bold]gsm8k:train:0 :smile:.jsonl"
    res = run("convert", str(name), str(tmp_path / "out.parquet"))
    assert res.exit_code == 2
    assert res.stderr == f"error: {name}: log file not found\n"


def test_user_text_is_printed_literally_in_the_summary_table(capsys):
    from oirl_fast.report import print_summary

    row = {"best_single": 0.5, "best_of_n": 0.6, "oracle": 0.9, "knn": 0.5, "random": 0.4, "auc": 0.7,
           "n_test_queries": 10, "test_in_train": 0, "test_near_duplicate": 0, "best_of_n_diff_ci": [0.0, 0.1]}
    print_summary({"[bold]my:train:set": {"grouped": row}})
    out = capsys.readouterr().out
    assert "[bold]my:train:set" in out and "\U0001f68b" not in out  # U+1F68B is rich's :train:


def test_user_text_is_printed_literally_in_score_output(tmp_path, make_artifact, real_pairs):
    model = make_artifact(tmp_path / "model")
    X, _ = real_pairs
    np.save(tmp_path / "q.npy", np.ascontiguousarray(X[:5, :D]))
    out = tmp_path / "picks [bold]x:train:.jsonl"
    res = run("score", str(model), "--embeddings", str(tmp_path / "q.npy"), "--ids", str(_ids(tmp_path, 5)),
              "--out", str(out))
    assert res.exit_code == 0, res.output
    assert f"5 lines in {out}: 5 scored, 0 errors" in res.stderr


def test_consoles_print_verbatim():
    from oirl_fast.console import make_console

    buf = io.StringIO()
    make_console(file=buf).print("gsm8k:train:0 [bold]x[/bold] :smile:")
    assert buf.getvalue() == "gsm8k:train:0 [bold]x[/bold] :smile:\n"
