"""ScoreOptions: validated once, with the CLI option's name in the error; the resume signature covers every
field that can change an output byte, and a new field is in it unless it says why it cannot."""
from __future__ import annotations

import dataclasses
import pickle

import pytest

from oirl_fast.errors import OirlError
from oirl_fast.scoring.options import ScoreOptions, options_from


@pytest.mark.parametrize("change, flag", [
    ({"top_k": 0}, "--top-k"),
    ({"top_k": 1.5}, "--top-k"),
    ({"top_k": True}, "--top-k"),
    ({"batch_size": 0}, "--batch-size"),
    ({"chunk_size": -3}, "--chunk-size"),
    ({"route": "fastest"}, "--route"),
    ({"device": "tpu"}, "--device"),
    ({"precision": "int8"}, "--precision"),
    ({"min_confidence": 1.5}, "--min-confidence"),
    ({"min_confidence": "high"}, "--min-confidence"),
    ({"with_scores": "yes"}, "--scores"),
    ({"strict": 1}, "--strict"),
])
def test_bad_options_are_refused_once_with_the_cli_name(change, flag):
    with pytest.raises(OirlError, match=flag) as exc:
        ScoreOptions(**change)
    assert "\n" not in str(exc.value)


def test_options_are_frozen_hashable_and_picklable(tmp_path):
    o = ScoreOptions(top_k=3, with_scores=True, min_confidence=0.4, cache_dir=tmp_path / "c")
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.top_k = 2
    assert o.cache_dir == str((tmp_path / "c").resolve())  # absolute: the Dask workers see the same folder
    assert pickle.loads(pickle.dumps(o)) == o and hash(o) == hash(ScoreOptions(**dataclasses.asdict(o)))
    assert options_from(None, {"top_k": 3}) == ScoreOptions(top_k=3)
    assert options_from(o, {}) is o
    with pytest.raises(TypeError):
        options_from(o, {"top_k": 2})


def test_every_field_is_signed_or_says_why_it_cannot_change_the_output():
    """A new option is part of the resume signature unless it declares, with a reason, that it
    cannot change an output byte; every field names its CLI option."""
    for f in dataclasses.fields(ScoreOptions):
        assert f.metadata.get("cli", "").startswith("--"), f.name
        assert "same_output" in f.metadata, f.name
        reason = f.metadata["same_output"]
        signed = f.name in ScoreOptions.signature_fields() or f.metadata["signed_if_set"]
        assert signed == (reason is None), f.name
        assert reason is None or len(reason) > 10, f.name
    assert set(ScoreOptions().signature()) == set(ScoreOptions.signature_fields())
    # what an output line depends on is signed
    assert {"top_k", "with_scores", "min_confidence", "route", "precision"} <= set(ScoreOptions.signature_fields())


@pytest.mark.parametrize("name", ScoreOptions.signature_fields())
def test_changing_a_signed_option_changes_the_signature(name):
    other = {"top_k": 2, "with_scores": True, "min_confidence": 0.5, "route": "native", "precision": "fp16",
             "max_line_bytes": 1024}
    assert name in other, f"add a changed value for the new signed option {name!r} here"
    base = ScoreOptions()
    assert dataclasses.replace(base, **{name: other[name]}).signature() != base.signature()


@pytest.mark.parametrize("name, value", [("query_field", "question"), ("id_field", "qid"), ("template", "{a} {b}"),
                                         ("output_field", "oirl")])
def test_an_input_mapping_option_is_signed_only_when_set(name, value):
    """The input-mapping options came later: at their defaults the signature is what it was before
    them (so older partial outputs still resume); set, they are part of it."""
    base = ScoreOptions()
    assert name not in base.signature()
    changed = dataclasses.replace(base, **{name: value}).signature()
    assert changed == {**base.signature(), name: value}
