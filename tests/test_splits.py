import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from oirl_fast.errors import OirlError
from oirl_fast.splits import split_log
from oirl_fast.schema import from_records
from oirl_fast.splits import Protocol, heldout_prompts, pool, holdout_mask


def _rec(qid, query, pid, correct, split, conf=None):
    return {"dataset": "toy", "query_id": qid, "query": query, "gold": "1", "prompt_id": pid,
            "prompt": f"prompt {pid}", "correct": correct, "split": split, "confidence": conf}


def toy_log():
    rows = []
    # question A asked twice (rows a1, a2), B once, all with prompts p0/p1; h only on test rows
    for qid, q, split in [("a1", "Question A", "train"), ("a2", "Question A", "test"), ("b1", "Question B", "train"),
                          ("c1", "Question C", "test")]:
        rows.append(_rec(qid, q, "p0", qid in ("a1", "c1"), split, 0.9))
        rows.append(_rec(qid, q, "p1", qid != "c1", split, 0.2))
        if split == "test":
            rows.append(_rec(qid, q, "h", True, split, 0.5))
    return from_records(rows)


def test_pool_by_group_pools_repeats():
    out = pool(toy_log(), unit="group", prompt_ids=["p0", "p1", "h"])
    a = out.texts.index("Question A")
    assert out.count[a].tolist() == [2, 2, 1]
    assert out.rate[a].tolist() == [0.5, 1.0, 1.0]
    b = out.texts.index("Question B")
    assert np.isnan(out.rate[b, 2]) and out.count[b, 2] == 0
    assert out.confidence[a, 0] == pytest.approx(0.9)


def test_heldout_prompts_are_those_never_on_train_rows():
    assert heldout_prompts(toy_log()) == ["h"]


def test_published_split_follows_source_and_drops_heldout_prompts_from_train():
    split = split_log(toy_log(), Protocol("published"))
    assert set(split.train.column("query_id").to_pylist()) == {"a1", "b1"}
    assert set(split.test.column("query_id").to_pylist()) == {"a2", "c1"}
    assert "h" not in split.train.column("prompt_id").to_pylist()


def test_grouped_split_keeps_questions_whole():
    table = toy_log()
    for seed in range(5):
        is_test = holdout_mask(table, Protocol("grouped", test_fraction=0.34, seed=seed))
        groups = np.array(table.column("group").to_pylist())
        assert not set(groups[is_test]) & set(groups[~is_test])


def test_published_needs_split_column():
    table = toy_log().drop_columns(["split"]).append_column("split", pa.nulls(10, pa.string()))
    with pytest.raises(OirlError, match="published"):
        holdout_mask(table, Protocol("published"))


def test_unknown_protocol():
    with pytest.raises(OirlError, match="unknown protocol"):
        Protocol("random")


def test_real_published_split_leaks_and_grouped_does_not(mawps_log):
    pub = split_log(mawps_log, Protocol("published"))
    train_groups = set(pub.train.column("group").to_pylist())
    test_groups = set(pub.test.column("group").to_pylist())
    assert test_groups <= train_groups  # the measured leak of the published split
    grp = split_log(mawps_log, Protocol("grouped"))
    assert not set(grp.train.column("group").to_pylist()) & set(grp.test.column("group").to_pylist())
    assert set(grp.train.column("prompt_id").to_pylist()) == {"nan", "CoT", "APE", "Dis", "ToT", "Decomp"}
    # every test question was logged with all 16 prompts somewhere in its rows
    test = pool(grp.test, unit="group")
    assert (test.count > 0).all()
    n_groups = len(pc.unique(mawps_log.column("group")))
    assert test.n_units == round(0.25 * n_groups)


def _headroom_log(repeats=True):
    rows = []
    spec = {"x1": ("Question X", 1, 0), "x2": ("Question X", 1, 0), "y1": ("Question Y", 0, 1), "y2": ("Question Y", 0, 1)}
    if not repeats:
        spec = {"x1": spec["x1"], "y1": spec["y1"]}
    for qid, (q, c0, c1) in spec.items():
        rows.append(_rec(qid, q, "p0", bool(c0), "test"))
        rows.append(_rec(qid, q, "p1", bool(c1), "test"))
    return from_records(rows)


def test_known_question_headroom_hand_computed():
    from oirl_fast.evaluation import known_question_headroom

    log = _headroom_log()
    test = pool(log, unit="group", prompt_ids=["p0", "p1"])
    prior = np.array([0.6, 0.4])  # p0 is the best single prompt
    x, y = test.texts.index("Question X"), test.texts.index("Question Y")
    perfect = np.zeros((2, 2))
    perfect[x, 0] = perfect[y, 1] = 1.0
    h = known_question_headroom(log, ["p0", "p1"], prior, perfect, test, "group")
    # half A (x1, y1) shrunk by 2 pseudo-samples: X -> p0 (0.73 vs 0.27), Y -> p1 (0.6 vs 0.4);
    # both right on half B, so the ceiling is 1.0; always-p0 gets X only: 0.5.
    assert h["available"] and h["n_questions"] == 2
    assert h["ceiling"] == pytest.approx(1.0) and h["best_single"] == pytest.approx(0.5)
    assert h["reward_model"] == pytest.approx(1.0) and h["captured_share"] == pytest.approx(1.0)
    always_p1 = np.tile([0.0, 1.0], (2, 1))
    h = known_question_headroom(log, ["p0", "p1"], prior, always_p1, test, "group")
    assert h["reward_model"] == pytest.approx(0.5) and h["captured_share"] == pytest.approx(0.0)


def test_headroom_without_repeats_says_what_is_missing():
    from oirl_fast.evaluation import known_question_headroom

    log = _headroom_log(repeats=False)
    test = pool(log, unit="group", prompt_ids=["p0", "p1"])
    h = known_question_headroom(log, ["p0", "p1"], np.array([0.5, 0.5]), np.zeros((2, 2)), test, "group")
    assert not h["available"] and "no repeated samples" in h["reason"]
