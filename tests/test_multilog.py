"""Several logs, one model: prompt matching, grouping across logs, leave-one-dataset-out."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from oirl_fast.cli import app
from oirl_fast.errors import OirlError
from oirl_fast.multilog import read_log_set, regroup_across
from oirl_fast.splits import split_log
from oirl_fast.schema import from_records, normalize_question, write_logs
from oirl_fast.splits import LODO, Protocol, holdout_mask
from oirl_fast.transfer import cross_dataset_leakage

PROMPTS = [("p0", "Answer:"), ("p1", "Let's think step by step."), ("p2", "Work it out carefully.")]


def _log(dataset: str, questions: list[str], seed: int, group_prefix: str | None = None, prompts=PROMPTS,
         repeats: int = 1) -> pa.Table:
    """One row per (question, prompt, repeat); with ``group_prefix`` the log carries its own group keys
    (``prefix:i``), as a log made by another tool might."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, q in enumerate(questions):
        for r in range(repeats):
            for j, (pid, text) in enumerate(prompts):
                row = {"dataset": dataset, "query_id": f"{dataset}:{i}:{r}", "query": q, "gold": str(i),
                       "prompt_id": pid, "prompt": text, "correct": bool(rng.random() < 0.3 + 0.2 * j)}
                if group_prefix is not None:
                    row["group"] = f"{group_prefix}:{i}"
                rows.append(row)
    return from_records(rows)


def _questions(n: int, tag: str) -> list[str]:
    return [f"{tag} has {i} apples and buys {i + 3} more . How many apples now ?" for i in range(n)]


def test_a_question_in_two_logs_lands_on_one_side_only(tmp_path):
    shared = _questions(20, "Tom")
    # the same questions, written differently (case, spacing of the punctuation), in the second log
    shared_b = [q.replace(" .", ".").replace(" ?", "?").upper() for q in shared]
    a = _log("a", shared + _questions(40, "Ann"), 0, group_prefix="a")
    b = _log("b", shared_b + _questions(40, "Bob"), 1, group_prefix="b")
    write_logs(a, tmp_path / "a.parquet")
    write_logs(b, tmp_path / "b.jsonl")
    # Plain concatenation keeps each log's own keys: shared questions get two groups, and the split cuts them.
    naive = pa.concat_tables([a, b])
    merged = read_log_set([tmp_path / "a.parquet", tmp_path / "b.jsonl"])
    assert merged.num_rows == naive.num_rows

    def sides(table, mask):
        by_question: dict[str, set] = {}
        for q, t in zip(table.column("query").to_pylist(), mask):
            by_question.setdefault(normalize_question(q), set()).add(bool(t))
        return by_question

    cut = [any(len(s) > 1 for s in sides(naive, holdout_mask(naive, Protocol("grouped", seed=seed))).values())
           for seed in range(5)]
    assert any(cut)  # the test can fail: without regrouping a shared question does sit on both sides
    for seed in range(5):
        by_question = sides(merged, holdout_mask(merged, Protocol("grouped", seed=seed)))
        assert all(len(s) == 1 for s in by_question.values())
    groups = dict(zip(merged.column("query").to_pylist(), merged.column("group").to_pylist()))
    assert all(groups[x] == groups[y] for x, y in zip(shared, shared_b))
    assert len(set(merged.column("group").to_pylist())) == 100  # 20 shared + 40 + 40


def test_a_folder_of_logs_is_read_as_several_logs(tmp_path):
    (tmp_path / "logs").mkdir()
    write_logs(_log("a", _questions(5, "Tom"), 0), tmp_path / "logs" / "a.parquet")
    write_logs(_log("b", _questions(5, "Tom"), 1), tmp_path / "logs" / "b.jsonl")
    (tmp_path / "logs" / "notes.txt").write_text("not a log")
    table = read_log_set([tmp_path / "logs"])
    assert set(table.column("dataset").to_pylist()) == {"a", "b"} and table.num_rows == 2 * 5 * 3
    assert len(set(table.column("group").to_pylist())) == 5  # the same five questions in both


def test_prompt_conflicts_between_logs_are_refused(tmp_path):
    write_logs(_log("a", _questions(5, "Tom"), 0), tmp_path / "a.parquet")
    other_text = [("p0", "Answer:"), ("p1", "Think it through."), ("p2", "Work it out carefully.")]
    write_logs(_log("b", _questions(5, "Ann"), 1, prompts=other_text), tmp_path / "b.parquet")
    with pytest.raises(OirlError, match="'p1'.*a.parquet.*b.parquet"):
        read_log_set([tmp_path / "a.parquet", tmp_path / "b.parquet"])
    other_id = [("p0", "Answer:"), ("cot", "Let's think step by step."), ("p2", "Work it out carefully.")]
    write_logs(_log("c", _questions(5, "Bob"), 2, prompts=other_id), tmp_path / "c.parquet")
    with pytest.raises(OirlError, match="'p1'.*a.parquet.*'cot'.*c.parquet"):
        read_log_set([tmp_path / "a.parquet", tmp_path / "c.parquet"])

    res = CliRunner().invoke(app, ["train", str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet"),
                                   "--out", str(tmp_path / "m"), "--no-compile"])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "a.parquet" in lines[0] and "b.parquet" in lines[0]
    assert not (tmp_path / "m").exists()


def test_query_id_reused_for_another_question_is_refused(tmp_path):
    write_logs(_log("x", _questions(5, "Tom"), 0), tmp_path / "a.parquet")
    write_logs(_log("x", _questions(5, "Ann"), 1), tmp_path / "b.parquet")  # same ids x:0:0.., other questions
    with pytest.raises(OirlError, match="query id .*a.parquet.*b.parquet"):
        read_log_set([tmp_path / "a.parquet", tmp_path / "b.parquet"])


def test_leave_one_dataset_out_drops_every_heldout_question_from_training():
    c_only, ac, bc = _questions(30, "Cat"), _questions(10, "Ann"), _questions(6, "Bob")
    a = _log("a", ac + _questions(25, "Amy"), 0, repeats=2)
    b = _log("b", [q.upper() for q in bc] + _questions(25, "Ben"), 1)
    c = _log("c", c_only + ac + bc, 2)
    table = regroup_across([a, b, c])
    split = split_log(table, Protocol(LODO, heldout_dataset="c"))
    assert set(split.test.column("dataset").to_pylist()) == {"c"} and split.test.num_rows == c.num_rows
    test_q = {normalize_question(q) for q in split.test.column("query").to_pylist()}
    train_q = {normalize_question(q) for q in split.train.column("query").to_pylist()}
    assert not test_q & train_q
    assert set(split.train.column("group").to_pylist()).isdisjoint(split.test.column("group").to_pylist())
    assert train_q == {normalize_question(q) for q in _questions(25, "Amy") + _questions(25, "Ben")}
    leak = cross_dataset_leakage(table, "c")
    assert leak["heldout_questions"] == 46 and leak["in_training_datasets"] == 16
    assert leak["by_dataset"] == {"a": 10, "b": 6}
    assert leak["dropped_rows"] == 10 * 2 * 3 + 6 * 3
    assert split.train.num_rows == a.num_rows + b.num_rows - leak["dropped_rows"]

    with pytest.raises(OirlError, match="held-out dataset 'd' is not in"):
        holdout_mask(table, Protocol(LODO, heldout_dataset="d"))
    with pytest.raises(OirlError, match="needs one"):
        Protocol(LODO)


def test_multilog_train_and_per_dataset_evaluate(tmp_path, cache_dir):
    shared = _questions(15, "Tom")
    write_logs(_log("alpha", shared + _questions(45, "Ann"), 0, repeats=2), tmp_path / "alpha.parquet")
    write_logs(_log("beta", [s.lower() for s in shared] + _questions(45, "Bob"), 1), tmp_path / "beta.jsonl")
    logs = [str(tmp_path / "alpha.parquet"), str(tmp_path / "beta.jsonl")]
    res = CliRunner().invoke(app, ["train", *logs, "--out", str(tmp_path / "m"), "--no-compile", "--n-estimators", "20",
                                   "--cache-dir", str(cache_dir)])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    assert meta["dataset"] == "alpha+beta"
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "m"), *logs, "--seeds", "1", "--json",
                                   "--report", str(tmp_path / "r.json"), "--cache-dir", str(cache_dir)])
    assert res.exit_code == 0, res.output
    summ = json.loads(res.stdout)
    assert set(summ) == {"alpha+beta", "alpha", "beta"}
    pooled, per = summ["alpha+beta"]["grouped"], {ds: summ[ds]["grouped"] for ds in ("alpha", "beta")}
    # a test question that both logs hold counts once pooled and once in each dataset
    both = per["alpha"]["n_test_queries"] + per["beta"]["n_test_queries"] - pooled["n_test_queries"]
    assert 0 <= both <= 15
    for s in [pooled, *per.values()]:
        assert s["test_in_train"] == 0 and set(s["test_in_train_by_dataset"]) == {"alpha", "beta"}
        assert all(v == 0 for v in s["test_in_train_by_dataset"].values())  # grouped across logs: nothing leaks
        lo, hi = s["best_of_n_diff_ci"]
        assert lo - 1e-9 <= s["best_of_n"] - s["best_single"] <= hi + 1e-9
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["per_dataset"]) == {"alpha", "beta"}

    # A model trained on one log's groups but evaluated on the two logs would see other splits;
    # the leave-one-dataset-out protocol is reachable from the command line too.
    res = CliRunner().invoke(app, ["train", *logs, "--out", str(tmp_path / "t"), "--no-compile", "--n-estimators", "20",
                                   "--protocol", LODO, "--heldout-dataset", "beta", "--cache-dir", str(cache_dir)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "t"), *logs, "--seeds", "1", "--json",
                                   "--cache-dir", str(cache_dir)])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)["beta"][LODO]
    assert s["n_test_queries"] == 60 and s["test_in_train"] == 0
