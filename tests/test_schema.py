import json

import pyarrow as pa
import pytest

from oirl_fast.errors import OirlError
from oirl_fast.schema import LOG_SCHEMA, from_records, group_key, normalize_question, read_logs, write_logs

REC = {
    "dataset": "toy", "query_id": "q1", "query": "What is 2 + 2 ?", "gold": "4",
    "prompt_id": "p0", "prompt": "Answer:", "correct": True,
}


def test_group_key_folds_tokenized_spacing_and_case():
    assert normalize_question("Mary has  3 apples . How many ?") == "mary has 3 apples. how many?"
    assert group_key("Mary has 3 apples . How many ?") == group_key("mary has 3 apples. How many?")
    assert group_key("Mary has 3 apples.") != group_key("Mary has 4 apples.")


def test_roundtrip_parquet_and_jsonl(tmp_path):
    table = from_records([REC, {**REC, "prompt_id": "p1", "prompt": "Think:", "correct": False, "confidence": 0.5}])
    assert table.schema.equals(LOG_SCHEMA, check_metadata=False)
    for name in ("log.parquet", "log.jsonl"):
        write_logs(table, tmp_path / name)
        back = read_logs(tmp_path / name)
        assert back.to_pylist() == table.to_pylist()
    assert table.column("group").to_pylist()[0] == group_key(REC["query"])


def test_jsonl_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(REC) + "\n{not json\n")
    with pytest.raises(OirlError, match=r"bad.jsonl:2: malformed JSON"):
        read_logs(path)


def test_jsonl_missing_field_and_wrong_type(tmp_path):
    path = tmp_path / "bad.jsonl"
    rec = dict(REC)
    del rec["gold"]
    path.write_text(json.dumps(REC) + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(OirlError, match=r"bad.jsonl:2: record lacks gold"):
        read_logs(path)
    path.write_text(json.dumps({**REC, "correct": "yes"}) + "\n")
    with pytest.raises(OirlError, match=r"bad.jsonl:1: 'correct' must be true or false"):
        read_logs(path)


def test_missing_file_and_unknown_column(tmp_path):
    with pytest.raises(OirlError, match="nope.parquet: log file not found"):
        read_logs(tmp_path / "nope.parquet")
    with pytest.raises(OirlError, match="unknown column"):
        from_records([{**REC, "colour": "red"}])


def test_failed_write_keeps_previous_file(tmp_path):
    path = tmp_path / "log.parquet"
    write_logs(from_records([REC]), path)
    before = path.read_bytes()
    with pytest.raises(OirlError):
        write_logs(pa.table({"query": ["x"]}), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["log.parquet"]
