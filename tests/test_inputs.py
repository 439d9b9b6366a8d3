"""Scoring inputs as they come: the output format checked byte for byte against a reference writer,
benchmark files as shipped (GSM8K's gzip JSON lines, SVAMP's gzip CSV), Parquet and CSV under the
JSON-lines rules, --output-field, and one pass with resume."""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from oirl_fast.errors import OirlError
from oirl_fast.features import FeatureLayout
from oirl_fast.query_rows import QueryFields
from oirl_fast.scoring import job as job_mod
from oirl_fast.scoring.reader import InputReader
from oirl_fast.scoring.stream import score_file
from oirl_fast.train import artifact as art
from oirl_fast.train.reward_model import RewardModel, TrainConfig

D = 384
PUBLISHED = Path(__file__).resolve().parent.parent / "oirl_fast" / "data" / "published"
GSM8K_TEST = PUBLISHED / "gsm8k" / "test.jsonl.gz"
SVAMP_FOLD = PUBLISHED / "svamp" / "fold0_train.csv.gz"
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


class HashEmbedder:
    """A deterministic stand-in for the model's embedder: a unit vector seeded by the text's hash."""

    model_id = MODEL_ID

    def embed(self, texts, add=True):
        out = np.empty((len(texts), D), np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest()[:8], "little")
            v = np.random.default_rng(seed).normal(size=D).astype(np.float32)
            out[i] = v / np.linalg.norm(v)
        return out


def factory(cached=True):
    return HashEmbedder()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A small synthetic LightGBM model over 16 prompts, with a calibrator and prompt texts that need escaping."""
    rng = np.random.default_rng(0)
    P = 16
    p_emb = rng.normal(size=(P, D)).astype(np.float32)
    p_emb /= np.linalg.norm(p_emb, axis=1, keepdims=True)
    q = rng.normal(size=(500, D)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    qi, pi = rng.integers(0, 500, 5000), rng.integers(0, P, 5000)
    y = ((q[qi, :8] * p_emb[pi, :8]).sum(1) + 0.3 * rng.normal(size=5000) > 0).astype(float)
    config = TrainConfig(n_estimators=20, early_stopping_rounds=1000)
    fitted = RewardModel(config).fit(np.hstack([q[qi], p_emb[pi]]), y)
    meta = art.ModelMetadata(
        dataset="synthetic", backend="lightgbm", embedding_model=MODEL_ID, feature_layout=FeatureLayout(D, D).to_dict(),
        prompts=[{"id": f"p{i}", "text": f"Prompt {i}: \"think\" \u00e9\u2028", "seen_in_training": True} for i in range(P)],
        prompt_embeddings_sha256=art.embeddings_hash(p_emb), protocol={"name": "test"}, train_config=config.to_dict(),
        best_iteration=fitted.best_iteration, n_train_examples=len(y), calibration=fitted.calibrator.to_dict(),
    )
    out = tmp_path_factory.mktemp("models") / "synth"
    art.save_artifact(out, fitted, meta, p_emb, compile_library=False)
    return out


def _read(path):
    return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------------------
# The output format, byte for byte


def _reference_lines(model_dir, rows, top_k, threshold):
    """The output lines as the format defines them, written here with the standard library from the
    native model's scores: ``json.dumps(ensure_ascii=False)`` and U+0085/2028/2029 escaped."""
    from oirl_fast.scoring.scorer import Scorer

    a = art.load_artifact(model_dir)
    scorer = Scorer.for_artifact(a, route="native", device="cpu")
    ids = a.metadata.prompt_ids
    texts = [p["text"] for p in a.metadata.prompts]
    out = []
    for n, row in enumerate(rows, 1):
        if isinstance(row, str):  # an error record
            out.append({"line": n, "id": None, "error": row})
            continue
        full = scorer.scores(HashEmbedder().embed([row["query"]]), dtype=np.float64)[0]
        order = np.argsort(-full, kind="stable")[:top_k]
        rec = {"line": n, "id": row.get("id"), **{k: v for k, v in row.items() if k not in ("id", "query")},
               "prompt_id": ids[order[0]], "prompt": texts[order[0]], "score": float(full[order[0]])}
        if top_k > 1:
            rec["top_k"] = [{"prompt_id": ids[i], "score": float(full[i])} for i in order]
        rec["confidence"] = float(a.model.calibrator(np.array([full[order[0]]]))[0])
        if threshold is not None:
            rec["low_confidence"] = rec["confidence"] < threshold
        out.append(rec)
    breaks = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})
    return "".join(json.dumps(r, ensure_ascii=False).translate(breaks) + "\n" for r in out).encode()


def test_output_bytes_match_the_reference_format(model, tmp_path):
    rows = [{"id": f"q{i}", "query": f"How many eggs does hen {i} lay?", "meta": {"k": [1, 2.5, None, True]}}
            for i in range(40)]
    rows[3] = {"id": 7, "query": "Ünïcode \u2028 query", "note": "caf\u00e9 \"quoted\" \\ back"}
    rows[9] = {"query": "no id here", "big": 10 ** 30, "tiny": 1e-7}
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines[5], lines[20] = "not json {", '{"id": 1, "query": "x", "v": NaN}'
    rows[5], rows[20] = "malformed JSON (Expecting value at column 1)", "NaN is not a JSON number"
    inp = tmp_path / "q.jsonl"
    inp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for top_k, threshold, chunk in ((1, None, 2048), (3, 0.5, 7)):
        out = tmp_path / f"o{top_k}.jsonl"
        score_file(model, inp, out, top_k=top_k, min_confidence=threshold, chunk_size=chunk, route="native",
                   progress=False, embedder_factory=factory)
        assert out.read_bytes() == _reference_lines(model, rows, top_k, threshold)


# --------------------------------------------------------------------------------------
# Benchmark files as shipped


def test_gsm8k_test_file_as_shipped_scores_every_line(model, tmp_path):
    """GSM8K's gzip JSON lines with a "question" field (no id): one pick per line, the other fields kept,
    the same picks as the same questions given as {"id", "query"} lines."""
    questions = [json.loads(x) for x in gzip.decompress(GSM8K_TEST.read_bytes()).decode().splitlines()]
    out = tmp_path / "gsm8k.jsonl"
    s = score_file(model, GSM8K_TEST, out, query_field="question", progress=False, embedder_factory=factory)
    assert s.scored == len(questions) == s.lines and s.errors == 0
    recs = _read(out)
    assert [r["line"] for r in recs] == list(range(1, len(questions) + 1))
    assert all(r["answer"] == q["answer"] and "question" not in r and r["id"] is None for r, q in zip(recs, questions))
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({"query": q["question"]}) + "\n" for q in questions), encoding="utf-8")
    score_file(model, plain, tmp_path / "ref.jsonl", progress=False, embedder_factory=factory)
    assert [r["prompt_id"] for r in recs] == [r["prompt_id"] for r in _read(tmp_path / "ref.jsonl")]


def test_svamp_csv_as_shipped_scores_with_a_template(model, tmp_path):
    """SVAMP's gzip CSV (Body and Ques columns, no id): every row scored, its query the template's text."""
    text = gzip.decompress(SVAMP_FOLD.read_bytes()).decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    out = tmp_path / "svamp.jsonl"
    s = score_file(model, SVAMP_FOLD, out, template="{Body} {Ques}", id_field="Question", progress=False,
                   embedder_factory=factory)
    assert s.scored == len(rows) == s.lines and s.errors == 0
    recs = _read(out)
    assert [r["id"] for r in recs] == [r["Question"] for r in rows]
    assert recs[0]["Answer"] == rows[0]["Answer"] and "Body" not in recs[0] and "Ques" not in recs[0]
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({"id": r["Question"], "query": f"{r['Body']} {r['Ques']}"}) + "\n"
                             for r in rows), encoding="utf-8")
    score_file(model, plain, tmp_path / "ref.jsonl", progress=False, embedder_factory=factory)
    assert [r["prompt_id"] for r in recs] == [r["prompt_id"] for r in _read(tmp_path / "ref.jsonl")]


# --------------------------------------------------------------------------------------
# CSV and Parquet under the JSON-lines rules


ROWS = [{"id": "a", "question": "What is 2 + 2?", "prompt": "user's own prompt column"},
        {"id": "b", "question": "", "prompt": "x"},
        {"id": "c", "question": "How far is 30 km at 60 km/h?", "prompt": "y"}]


def _write(fmt: str, path: Path, rows=ROWS) -> Path:
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif fmt == "csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif fmt == "csv.gz":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        path.write_bytes(gzip.compress(buf.getvalue().encode()))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "parquet"])
def test_csv_and_parquet_give_the_json_lines_output(fmt, model, tmp_path):
    """One output line per row, the same error records, the same bytes as the rows given as JSON lines;
    a field named like an output field (prompt) is an error record unless --output-field moves the outputs."""
    src = _write(fmt, tmp_path / f"q.{fmt}")
    ref = _write("jsonl", tmp_path / "q.jsonl")
    for kw in ({}, {"output_field": "oirl"}):
        name = "w" if kw else "plain"
        score_file(model, src, tmp_path / f"{name}.{fmt}.jsonl", query_field="question", progress=False,
                   embedder_factory=factory, **kw)
        score_file(model, ref, tmp_path / f"{name}.ref.jsonl", query_field="question", progress=False,
                   embedder_factory=factory, **kw)
        assert (tmp_path / f"{name}.{fmt}.jsonl").read_bytes() == (tmp_path / f"{name}.ref.jsonl").read_bytes()
    plain = _read(tmp_path / f"plain.{fmt}.jsonl")
    assert ["--output-field" in r["error"] for r in plain] == [True, False, True]  # row 2: its empty question
    recs = _read(tmp_path / f"w.{fmt}.jsonl")
    assert recs[0]["prompt"] == ROWS[0]["prompt"] and recs[0]["question"] == ROWS[0]["question"]
    assert recs[0]["oirl"]["line"] == 1 and recs[0]["oirl"]["id"] == "a" and recs[0]["oirl"]["prompt_id"].startswith("p")
    assert recs[1] == {"oirl": {"line": 2, "id": "b", "error": "\"question\" is empty or only whitespace"}}
    assert recs[2]["oirl"]["line"] == 3


def test_a_csv_row_that_does_not_fit_its_header_is_an_error_record(model, tmp_path):
    src = tmp_path / "q.csv"
    src.write_text("id,query\n1,What is 2 + 2?\n2,one,too many\n3,\"a quoted, comma\"\n", encoding="utf-8")
    s = score_file(model, src, tmp_path / "o.jsonl", progress=False, embedder_factory=factory)
    recs = _read(tmp_path / "o.jsonl")
    assert s.scored == 2 and s.errors == 1 and recs[1]["error"] == "row has 3 cells, the header 2"
    assert [r["id"] for r in recs] == ["1", None, "3"]  # CSV cells are text, as written


def test_resume_and_strict_on_a_gzip_csv(model, tmp_path, monkeypatch):
    rows = [{"id": str(i), "question": f"What is {i} + {i}?"} for i in range(50)]
    src = _write("csv.gz", tmp_path / "q.csv.gz", rows)
    full, part = tmp_path / "full.jsonl", tmp_path / "part.jsonl"
    kw = dict(query_field="question", chunk_size=8, progress=False, embedder_factory=factory)
    score_file(model, src, full, **kw)
    real, calls = job_mod.Scoring.score_chunk, {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(job_mod.Scoring, "score_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        score_file(model, src, part, **kw)
    monkeypatch.setattr(job_mod.Scoring, "score_chunk", real)
    s = score_file(model, src, part, resume=True, **kw)
    assert s.resumed == 16 and s.lines == 50 and part.read_bytes() == full.read_bytes()
    # --strict: the first bad row stops the run, and no output of it is left
    bad = _write("csv.gz", tmp_path / "bad.csv.gz", rows[:20] + [{"id": "x", "question": " "}] + rows[20:])
    with pytest.raises(OirlError, match="empty") as exc:
        score_file(model, bad, tmp_path / "strict.jsonl", strict=True, **kw)
    assert exc.value.line == 21 and not list(tmp_path.glob("strict.jsonl*"))


def test_the_reader_counts_progress_in_stored_bytes(tmp_path):
    rows = [{"id": str(i), "query": f"question {i} " * 20} for i in range(3000)]
    src = tmp_path / "q.jsonl.gz"
    src.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    reader = InputReader(src)
    seen, positions = 0, []
    for it in reader.items():
        seen += 1
        if seen % 500 == 0:
            positions.append(reader.position())
    assert seen == 3000 and reader.total == src.stat().st_size
    assert positions == sorted(positions) and 0 < positions[0] < positions[-1] <= reader.total
    # a resumed output longer than the input is refused when the input ends
    with pytest.raises(OirlError, match="the output has 4000 lines, the input only 3000"):
        list(InputReader(src, skip=4000).items())


def test_query_fields_build_the_query_or_say_why_not():
    f = QueryFields(template="{Body} {Ques}", id_field="qid")
    assert f.query_of({"Body": "Tom has 3 apples.", "Ques": "How many?"}) == "Tom has 3 apples. How many?"
    assert f.id_of({"qid": 4}) == 4
    for rec, why in (({"Body": "x"}, 'missing "Ques" field'), ({"Body": "x", "Ques": 3}, '"Ques" must be a string')):
        with pytest.raises(ValueError, match=why):
            f.query_of(rec)
    for bad in ("{}", "{0}", "{a.b}", "{a:>3}", "no fields", "{unclosed"):
        with pytest.raises(OirlError, match="--template"):
            QueryFields(template=bad)


def test_oirl_answer_reads_the_shipped_files_as_they_are():
    """``oirl answer --queries`` takes the same files through the same mapping: GSM8K's questions with their
    gold answers (graded by the gsm8k grader), SVAMP's rows by template, ids from a field or the row number."""
    from oirl_fast.collect.graders import get_grader
    from oirl_fast.collect.requests import load_queries

    gsm = load_queries(GSM8K_TEST, fields=QueryFields("question"), gold_check=get_grader("gsm8k").check_gold,
                       require_gold=False)
    first = json.loads(gzip.decompress(GSM8K_TEST.read_bytes()).decode().splitlines()[0])
    assert len(gsm) == 1319 and gsm[0].id == "1" and gsm[0].query == first["question"] and gsm[0].gold == first["answer"]
    # (SVAMP repeats a Question text with other numbers: the row number is its id)
    svamp = load_queries(SVAMP_FOLD, fields=QueryFields(template="{Body} {Ques}"), require_gold=False)
    rows = list(csv.DictReader(io.StringIO(gzip.decompress(SVAMP_FOLD.read_bytes()).decode())))[:3]
    assert [q.query for q in svamp[:3]] == [f"{r['Body']} {r['Ques']}" for r in rows]
    assert [q.id for q in svamp[:3]] == ["1", "2", "3"]
    with pytest.raises(OirlError, match='missing "nope" field'):
        load_queries(GSM8K_TEST, fields=QueryFields("nope"), require_gold=False)


def test_rerank_reads_a_log_whose_question_sits_in_another_field(tmp_path):
    """``oirl rerank --query-field/--id-field/--template``: the log's question and id from other fields,
    through the same mapping; the table equals the log written with the usual field names."""
    from oirl_fast.multilog import read_log_set
    from oirl_fast.query_rows import read_logs_as

    rows = [{"query_id": f"g{i}", "query": f"What is {i} + {i}?", "group": f"g{i}", "gold": str(2 * i),
             "prompt_id": f"p{j}", "prompt": f"Prompt {j}",
             "correct": (i + j) % 2 == 1, "dataset": "toy", "split": "train"} for i in range(6) for j in range(2)]
    plain = tmp_path / "log.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    renamed = [{"question": r["query"], "qid": r["query_id"], **{k: v for k, v in r.items() if k not in ("query", "query_id")}}
               for r in rows]
    src = tmp_path / "bench.jsonl.gz"
    src.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in renamed).encode()))
    got = read_logs_as(src, QueryFields("question", "qid"))
    assert got.to_pylist() == read_log_set(plain).to_pylist()
    with pytest.raises(OirlError, match='missing "Body" field'):
        read_logs_as(src, QueryFields(template="{Body} {question}", id_field="qid"))


def test_the_new_options_are_checked_once_with_the_others():
    from oirl_fast.scoring.options import ScoreOptions

    with pytest.raises(OirlError, match="--threads must be an integer of at least 1"):
        ScoreOptions(threads=0)
    with pytest.raises(OirlError, match="either --query-field or --template"):
        ScoreOptions(query_field="question", template="{a}")
    with pytest.raises(OirlError, match="--output-field must be a field name"):
        ScoreOptions(output_field="")
    o = ScoreOptions(template="{Body} {Ques}", output_field="oirl")
    assert o.row_fields.query.query_names() == ("Body", "Ques") and o.row_fields.output_field == "oirl"


def test_a_named_field_the_first_record_lacks_is_refused_up_front(model, tmp_path):
    """--query-field / --template naming fields the file's first record lacks: one OirlError naming the file,
    the record's line and its fields, before anything is written; later rows keep their own error records."""
    src = tmp_path / "q.jsonl"
    src.write_text("\n" + "not json\n" + json.dumps({"id": 1, "question": "Tom has 3 apples."}) + "\n")
    out = tmp_path / "o.jsonl"
    for kw, named in ((dict(query_field="Question"), "--query-field 'Question'"),
                      (dict(template="{Body} {question}"), "--template '{Body} {question}'")):
        with pytest.raises(OirlError) as exc:
            score_file(model, src, out, progress=False, embedder_factory=factory, **kw)
        assert exc.value.path == str(src) and exc.value.line == 3  # the first record, after a blank and a bad line
        assert named in exc.value.message and "'id', 'question'" in exc.value.message
        assert not out.exists() and not out.with_name(out.name + ".partial").exists()
    # the first record has the field, a later one does not: that row is an error record, as ever
    src.write_text(json.dumps({"id": 1, "question": "Tom has 3 apples."}) + "\n" + json.dumps({"id": 2}) + "\n")
    s = score_file(model, src, out, query_field="question", progress=False, embedder_factory=factory)
    assert (s.scored, s.errors) == (1, 1)
    assert 'missing "question" field' in json.loads(out.read_text().splitlines()[1])["error"]
    # the default field is not checked up front: a file without "query" is a file of error records
    src.write_text(json.dumps({"id": 1, "question": "x"}) + "\n")
    s = score_file(model, src, out, progress=False, embedder_factory=factory)
    assert (s.scored, s.errors) == (0, 1)
