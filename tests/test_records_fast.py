"""record_item's short cut for the common record gives the Item the general rules give."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from oirl_fast.query_rows import QueryFields
from oirl_fast.scoring.options import ScoreOptions
from oirl_fast.scoring.records import RowFields, general_item, record_item

values = st.one_of(st.none(), st.integers(), st.booleans(), st.floats(allow_nan=False),
                   st.text(max_size=12), st.sampled_from(["Tom has 3 apples.", "3 apples", " a", "\u200b", "", "é?"]),
                   st.lists(st.integers(), max_size=2))
records = st.one_of(st.dictionaries(st.sampled_from(["id", "query", "prompt", "note", "score", "Query"]), values,
                                    max_size=3), values)


@settings(max_examples=600, deadline=None)
@given(records, st.integers(1, 10**6))
def test_short_cut_equals_the_general_rules(rec, line):
    fields = ScoreOptions().row_fields  # what the CLI passes: equal to, not the same object as, the default
    assert fields.plain and RowFields().plain
    assert record_item(rec, line, fields) == general_item(rec, line, fields)
    assert record_item(rec, line) == general_item(rec, line, RowFields())


def test_other_fields_never_take_the_short_cut():
    for fields in (RowFields(QueryFields(query_field="q")), RowFields(QueryFields(id_field="key")),
                   RowFields(QueryFields(template="{a} {b}")), RowFields(output_field="oirl"), RowFields(None)):
        assert not fields.plain
    item = record_item({"id": 1, "query": "x", "q": "Tom has 3 apples."}, 1, RowFields(QueryFields(query_field="q")))
    assert item.query == "Tom has 3 apples." and item.extra == {"query": "x"}
