"""The published Prompt-OIRL importer: counts, alignment, leakage figures and bad inputs."""
from __future__ import annotations

import csv
import gzip
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from oirl_fast.collect.published import (
    DATASETS,
    SOURCE_TAG,
    bundled_source,
    import_published,
    load_prompts,
    load_questions,
)
from oirl_fast.errors import OirlError
from oirl_fast.schema import LOG_SCHEMA

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
BUNDLED = bundled_source()
CORR = "prompt_oirl_llama2/corr"
CRITICS = "prompt_oirl_llama2/critics"

# (train queries, test queries) of each dataset under the published split.
SIZES = {"gsm8k": (7473, 1000), "svamp": (15000, 4690), "mawps": (6000, 1685)}
N_TRAIN_PROMPTS, N_HELDOUT_PROMPTS = 6, 10


@pytest.fixture(scope="module")
def tables():
    return {ds: import_published(ds) for ds in DATASETS}


# --------------------------------------------------------------------------- raw-file helpers


def _raw_path(source: Path, rel: str) -> Path:
    path = source / rel
    return path if path.exists() else path.with_name(path.name + ".gz")


def _read_raw(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()


def _write_raw(path: Path, data: bytes) -> None:
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def _raw_lines(source: Path, rel: str) -> list[str]:
    return _read_raw(_raw_path(source, rel)).decode("utf-8").splitlines()


def _raw_verdict(source: Path, rel: str, line: int) -> bool:
    """The verdict on 0-based ``line`` of a corr file, parsed without the importer."""
    text = _raw_lines(source, rel)[line]
    index, verdict = text.strip("()").split(",")
    assert int(index) == line
    return {"True": True, "False": False}[verdict.strip()]


def _corr_line(ds: str, prompt_id: str, query_id: str) -> tuple[str, int]:
    if ds == "gsm8k":
        _, split, i = query_id.split(":")
        if split == "test" and not prompt_id.startswith("gpt4"):
            return f"{CORR}/gsm8k/llama_gsm8k_test_corr_{prompt_id}.txt", int(i)
        return f"{CORR}/gsm8k/llama_gsm8k_corr_{prompt_id}.txt", int(i)
    row = int(query_id.split(":")[1])
    if prompt_id.startswith("gpt4"):
        row -= SIZES[ds][0]  # held-out files hold only the test rows
    return f"{CORR}/{ds}/llama_{ds}_corr_{prompt_id}.txt", row


# --------------------------------------------------------------------------- the bundled data


def test_prompts():
    prompts = load_prompts()
    assert [p.index for p in prompts] == list(range(16))
    assert [p.id for p in prompts[:6]] == ["nan", "CoT", "APE", "Dis", "ToT", "Decomp"]
    assert [p.id for p in prompts[6:]] == [f"gpt4_{k}" for k in range(10)]
    assert {p.role for p in prompts[:6]} == {"train"} and {p.role for p in prompts[6:]} == {"heldout"}
    assert prompts[1].text == "Let's think step by step: "


@pytest.mark.parametrize("ds", DATASETS)
def test_row_counts(tables, ds):
    table = tables[ds]
    assert table.schema.equals(LOG_SCHEMA, check_metadata=True)
    n_train, n_test = SIZES[ds]
    assert table.num_rows == n_train * N_TRAIN_PROMPTS + n_test * (N_TRAIN_PROMPTS + N_HELDOUT_PROMPTS)
    rows = table.select(["split", "prompt_id"]).to_pylist()
    counts: dict[tuple[str, str], int] = {}
    for r in rows:
        counts[(r["split"], r["prompt_id"])] = counts.get((r["split"], r["prompt_id"]), 0) + 1
    for p in load_prompts():
        assert counts.get(("test", p.id)) == n_test
        assert counts.get(("train", p.id), 0) == (n_train if p.role == "train" else 0)
    assert set(table.column("dataset").to_pylist()) == {ds}
    assert set(table.column("source").to_pylist()) == {SOURCE_TAG}
    assert set(table.column("sample").to_pylist()) == {0}
    assert table.column("response").null_count == table.num_rows
    # one record per (query, prompt)
    pairs = set(zip(table.column("query_id").to_pylist(), table.column("prompt_id").to_pylist()))
    assert len(pairs) == table.num_rows


@pytest.mark.parametrize("ds", DATASETS)
def test_questions(ds):
    questions = load_questions(ds)
    n_train, n_test = SIZES[ds]
    assert len(questions) == n_train + n_test
    assert [q.row for q in questions] == list(range(n_train + n_test))
    assert [q.split for q in questions] == ["train"] * n_train + ["test"] * n_test
    assert len({q.query_id for q in questions}) == len(questions)
    assert all(q.query.strip() and q.gold.strip() for q in questions)


def test_gsm8k_alignment(tables):
    questions = load_questions("gsm8k")
    test0 = questions[7473]
    assert test0.query_id == "gsm8k:test:0" and test0.split == "test"
    assert test0.query.startswith("Janet’s ducks")
    assert test0.gold == "18"
    assert questions[0].query_id == "gsm8k:train:0"
    assert questions[0].query.startswith("Natalia sold clips")
    assert questions[0].gold == "72"
    # gold: text after the last '####', commas removed
    raw = json.loads(_raw_lines(BUNDLED, "gsm8k/train.jsonl")[5])
    assert questions[5].gold == raw["answer"].rsplit("####", 1)[1].strip().replace(",", "")
    assert all("," not in q.gold for q in questions)
    table = tables["gsm8k"]
    first = table.filter(pc.equal(table.column("query_id"), "gsm8k:test:0"))
    assert first.num_rows == 16
    assert set(first.column("query").to_pylist()) == {test0.query}


def test_fold_alignment():
    # first row of fold 0, placeholders filled from 'Numbers' as written
    svamp = load_questions("svamp")
    assert svamp[0].query.startswith("bobby ate some pieces of candy . then he ate 25 more")
    assert "a total of 43 pieces" in svamp[0].query
    assert svamp[0].gold == "18.0"
    mawps = load_questions("mawps")
    assert mawps[0].query.startswith("Mary is baking a cake . The recipe wants 8.0 cups of flour")
    assert mawps[0].gold == "6"
    # fold order: the first row of fold 1 follows the last row of fold 0
    n_fold0 = len(list(csv.reader(io.StringIO(_read_raw(_raw_path(BUNDLED, "mawps/fold0_train.csv")).decode())))) - 1
    header, first = list(csv.reader(io.StringIO(_read_raw(_raw_path(BUNDLED, "mawps/fold1_train.csv")).decode())))[:2]
    rec = dict(zip(header, first))
    text = rec["Question"]
    for k, value in reversed(list(enumerate(rec["Numbers"].split()))):
        text = text.replace(f"number{k}", value)
    assert mawps[n_fold0].query == text
    assert mawps[n_fold0].gold == rec["Answer"]


@pytest.mark.parametrize("ds", DATASETS)
def test_correct_matches_raw_lines(tables, ds):
    table = tables[ds]
    rng = np.random.default_rng(0)
    picks = list(rng.choice(table.num_rows, size=12, replace=False))
    # plus the edges: first and last row, and the first test query with a held-out prompt
    first_heldout = table.column("prompt_id").to_pylist().index("gpt4_0")
    picks += [0, table.num_rows - 1, first_heldout]
    for i in picks:
        row = table.slice(int(i), 1).to_pylist()[0]
        rel, line = _corr_line(ds, row["prompt_id"], row["query_id"])
        assert row["correct"] == _raw_verdict(BUNDLED, rel, line), (rel, line)


def test_specific_rows(tables):
    def row(ds, query_id, prompt_id):
        t = tables[ds]
        mask = pc.and_(pc.equal(t.column("query_id"), query_id), pc.equal(t.column("prompt_id"), prompt_id))
        out = t.filter(mask).to_pylist()
        assert len(out) == 1
        return out[0]

    cases = [
        ("gsm8k", "gsm8k:test:0", "gpt4_3", f"{CORR}/gsm8k/llama_gsm8k_corr_gpt4_3.txt", 0),
        ("gsm8k", "gsm8k:test:7", "APE", f"{CORR}/gsm8k/llama_gsm8k_test_corr_APE.txt", 7),
        ("gsm8k", "gsm8k:train:7472", "Decomp", f"{CORR}/gsm8k/llama_gsm8k_corr_Decomp.txt", 7472),
        ("svamp", "svamp:15003", "gpt4_5", f"{CORR}/svamp/llama_svamp_corr_gpt4_5.txt", 3),
        ("svamp", "svamp:15003", "CoT", f"{CORR}/svamp/llama_svamp_corr_CoT.txt", 15003),
        ("svamp", "svamp:19689", "gpt4_9", f"{CORR}/svamp/llama_svamp_corr_gpt4_9.txt", 4689),
        ("mawps", "mawps:6000", "gpt4_0", f"{CORR}/mawps/llama_mawps_corr_gpt4_0.txt", 0),
        ("mawps", "mawps:7684", "ToT", f"{CORR}/mawps/llama_mawps_corr_ToT.txt", 7684),
    ]
    for ds, qid, pid, rel, line in cases:
        assert row(ds, qid, pid)["correct"] == _raw_verdict(BUNDLED, rel, line), (qid, pid)


@pytest.mark.parametrize("ds", ["svamp", "mawps"])
def test_no_placeholder_left(tables, ds):
    queries = set(tables[ds].column("query").to_pylist())
    assert not [q for q in queries if re.search(r"\bnumber\d+\b", q)]


@pytest.mark.parametrize("ds,unique", [("svamp", 3961), ("mawps", 1744)])
def test_repeats_and_measured_leak(tables, ds, unique):
    table = tables[ds]
    assert len(set(table.column("query").to_pylist())) == unique  # the README's figures
    n_groups = len(set(table.column("group").to_pylist()))
    assert n_groups <= unique
    split = table.column("split").to_pylist()
    groups = table.column("group").to_pylist()
    train = {g for g, s in zip(groups, split) if s == "train"}
    test = {g for g, s in zip(groups, split) if s == "test"}
    assert test <= train  # 100% of published-test questions also occur in train


def test_gsm8k_split_has_no_leak(tables):
    table = tables["gsm8k"]
    split = table.column("split").to_pylist()
    groups = table.column("group").to_pylist()
    train = {g for g, s in zip(groups, split) if s == "train"}
    test = {g for g, s in zip(groups, split) if s == "test"}
    assert len(test) == 1000
    assert not train & test


@pytest.mark.parametrize("ds", DATASETS)
def test_confidence_on_test_rows_only(tables, ds):
    table = tables[ds]
    is_test = np.array(pc.equal(table.column("split"), "test").to_numpy(zero_copy_only=False))
    valid = np.array(table.column("confidence").is_valid().to_numpy(zero_copy_only=False))
    assert np.array_equal(is_test, valid)
    conf = table.column("confidence").to_numpy(zero_copy_only=False)
    assert np.all((conf[valid] >= 0) & (conf[valid] <= 1))
    # values line up with the critic file of the prompt's index
    n_train = SIZES[ds][0]
    prompts = {p.id: p.index for p in load_prompts()}
    for pid in ("nan", "gpt4_7"):
        raw = np.load(io.BytesIO(_read_raw(_raw_path(BUNDLED, f"{CRITICS}/Processed_llama_{ds}_prompt_{prompts[pid]}_confidence.npy"))))
        mask = pc.and_(pc.equal(table.column("prompt_id"), pid), pc.equal(table.column("split"), "test"))
        sub = table.filter(mask)
        ids = sub.column("query_id").to_pylist()
        pos = [int(q.rsplit(":", 1)[1]) - (0 if ds == "gsm8k" else n_train) for q in ids]
        assert pos == list(range(len(raw)))
        assert np.array_equal(sub.column("confidence").to_numpy(), raw)


@pytest.mark.skipif(not (SHARED / "README.md").exists(), reason="no uncompressed data copy next to the repo")
@pytest.mark.parametrize("ds", DATASETS)
def test_shared_copy_gives_identical_table(tables, ds):
    assert import_published(ds, SHARED).equals(tables[ds], check_metadata=True)


def test_progress_flag_runs():
    assert import_published("mawps", progress=True).num_rows == 6000 * 6 + 1685 * 16


# --------------------------------------------------------------------------- bad inputs


@pytest.fixture
def copy(tmp_path) -> Path:
    dst = tmp_path / "published"
    shutil.copytree(BUNDLED, dst)
    return dst


def _edit_lines(source: Path, rel: str, edit) -> str:
    """Rewrite a text file of the copy through ``edit(lines) -> lines``; returns the file's name on disk."""
    path = _raw_path(source, rel)
    lines = _read_raw(path).decode("utf-8").splitlines(keepends=True)
    _write_raw(path, "".join(edit(lines)).encode("utf-8"))
    return path.name


@pytest.mark.parametrize(
    "ds,rel",
    [
        ("mawps", f"{CORR}/mawps/llama_mawps_corr_CoT.txt"),
        ("mawps", f"{CORR}/mawps/llama_mawps_corr_gpt4_4.txt"),
        ("gsm8k", f"{CORR}/gsm8k/llama_gsm8k_test_corr_nan.txt"),
    ],
)
def test_truncated_corr_file(copy, ds, rel):
    name = _edit_lines(copy, rel, lambda lines: lines[:-1])
    with pytest.raises(OirlError, match="truncated") as err:
        import_published(ds, copy)
    assert name in str(err.value)


def test_overlong_corr_file(copy):
    rel = f"{CORR}/mawps/llama_mawps_corr_gpt4_4.txt"
    name = _edit_lines(copy, rel, lambda lines: lines + [f"({len(lines)}, True)\n"])
    with pytest.raises(OirlError, match="expected 1685") as err:
        import_published("mawps", copy)
    assert name in str(err.value)


def test_missing_corr_file(copy):
    path = _raw_path(copy, f"{CORR}/mawps/llama_mawps_corr_Dis.txt")
    path.unlink()
    with pytest.raises(OirlError, match="not found") as err:
        import_published("mawps", copy)
    assert "llama_mawps_corr_Dis.txt" in str(err.value)


@pytest.mark.parametrize("bad", ["(7, True)\n", "(8, Maybe)\n", "8, True\n", "\n"])
def test_corr_line_wrong(copy, bad):
    rel = f"{CORR}/mawps/llama_mawps_corr_APE.txt"
    name = _edit_lines(copy, rel, lambda lines: lines[:8] + [bad] + lines[9:])
    with pytest.raises(OirlError) as err:
        import_published("mawps", copy)
    assert err.value.line == 9
    assert f"{name}:9" in str(err.value)


def test_csv_renamed_column(copy):
    rel = "mawps/fold2_train.csv"
    name = _edit_lines(copy, rel, lambda lines: [lines[0].replace("Answer", "Answr")] + lines[1:])
    with pytest.raises(OirlError, match="wrong column") as err:
        import_published("mawps", copy)
    assert name in str(err.value) and "Answer" in str(err.value)


def test_csv_missing_rows(copy):
    _edit_lines(copy, "svamp/fold4_train.csv", lambda lines: lines[:-1])
    with pytest.raises(OirlError, match="truncated") as err:
        load_questions("svamp", copy)
    assert "svamp" in str(err.value) and "19690" in str(err.value)


def test_placeholder_beyond_numbers(copy):
    rel = "mawps/fold3_train.csv"

    def edit(lines):
        lines = list(lines)
        lines[4] = lines[4].replace("number0", "number9", 1)
        return lines

    name = _edit_lines(copy, rel, edit)
    with pytest.raises(OirlError, match="number9") as err:
        load_questions("mawps", copy)
    assert f"{name}:5" in str(err.value)


def test_placeholder_number10_is_not_number1(copy):
    rel = "mawps/fold0_train.csv"
    numbers = " ".join(str(k) for k in range(100, 111))  # number0=100 ... number10=110
    row = f'number1 and number10 and number0 ?,{numbers},+ number0 number1,1,"[1]",x,y\n'
    _edit_lines(copy, rel, lambda lines: [lines[0], row] + lines[2:])
    assert load_questions("mawps", copy)[0].query == "101 and 110 and 100 ?"


def test_critic_wrong_length(copy):
    path = _raw_path(copy, f"{CRITICS}/Processed_llama_svamp_prompt_11_confidence.npy")
    values = np.load(io.BytesIO(_read_raw(path)))
    buf = io.BytesIO()
    np.save(buf, values[:-1])
    _write_raw(path, buf.getvalue())
    with pytest.raises(OirlError, match="expected 4690") as err:
        import_published("svamp", copy)
    assert path.name in str(err.value)


def test_critic_pickled_object_rejected(copy):
    path = _raw_path(copy, f"{CRITICS}/Processed_llama_mawps_prompt_0_confidence.npy")
    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}] * 1685, dtype=object), allow_pickle=True)
    _write_raw(path, buf.getvalue())
    with pytest.raises(OirlError) as err:
        import_published("mawps", copy)
    assert path.name in str(err.value)


def test_unknown_dataset():
    with pytest.raises(OirlError, match="unknown dataset"):
        load_questions("aqua")
