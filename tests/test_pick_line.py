"""The output line written without a dict (records.pick_line) is byte for byte the generic record's JSON."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from oirl_fast.scoring.candidates import Candidates
from oirl_fast.scoring.options import ScoreOptions
from oirl_fast.scoring.records import Item, Picked, candidate_json, dumps, pick_line, record

# texts with the characters JSON escapes or lines break at, and non-ASCII
TEXT = st.text(alphabet=st.sampled_from(list("ab \"\\/\n\t\x00\x1f\x7f\x85\u2028\u2029é中😀")) | st.characters(),
               max_size=12)
JSON_ID = st.none() | st.integers(-(2 ** 70), 2 ** 70) | TEXT | st.booleans() | st.lists(st.integers(), max_size=2)
FLOAT = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=400, deadline=None)
@given(line=st.integers(1, 10 ** 9), ident=JSON_ID, texts=st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=4),
       pick=st.integers(0, 3), score=FLOAT, conf=st.none() | st.floats(0.0, 1.0),
       min_conf=st.none() | st.floats(0.0, 1.0))
def test_pick_line_is_the_records_json(line, ident, texts, pick, score, conf, min_conf):
    ids, prompts = [t[0] for t in texts], [t[1] for t in texts]
    cands = Candidates(ids=ids, texts=prompts, embeddings=np.zeros((len(ids), 2), np.float32), source="model")
    b = pick % len(ids)
    picked = Picked(idx=np.array([[b]], np.int64), scores=np.array([[score]], np.float64),
                    confidence=None if conf is None else np.array([conf], np.float64))
    options = ScoreOptions(min_confidence=min_conf)
    item = Item(line=line, id=ident, query="q")
    fast = pick_line(item, candidate_json(cands), picked, 0, options)
    assert fast is not None
    assert fast == dumps(record(item, cands, picked, 0, options))


def test_other_shapes_go_to_the_generic_record():
    cands = Candidates(ids=["a", "b"], texts=["x", "y"], embeddings=np.zeros((2, 2), np.float32), source="model")
    picked = Picked(idx=np.array([[1, 0]], np.int64), scores=np.array([[0.5, 0.25]]))
    cj = candidate_json(cands)
    assert pick_line(Item(line=1, id="i", query="q", extra={"k": 1}), cj, picked, 0, ScoreOptions()) is None
    assert pick_line(Item(line=1, id="i", query="q"), cj, picked, 0, ScoreOptions(top_k=2)) is None
    assert pick_line(Item(line=1, id="i", query="q"), cj, picked, 0, ScoreOptions(output_field="oirl")) is None
    full = Picked(idx=picked.idx, scores=picked.scores, full=np.array([[0.25, 0.5]]))
    assert pick_line(Item(line=1, id="i", query="q"), cj, full, 0, ScoreOptions()) is None
