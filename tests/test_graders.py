"""Graders: pure functions, checked on hand-written cases, generated numbers, and the real GSM8K answers."""
import pytest
from hypothesis import given, strategies as st

from oirl_fast.collect.graders import GRADERS, GoldError, choice_letter, get_grader, last_number
from oirl_fast.collect.requests import parse_confidence
from oirl_fast.errors import OirlError


def test_numeric_tolerates_formatting():
    g = get_grader("numeric")
    assert g("So she makes $1,234.0 a day.", "1234")
    assert g("The answer is 18.", "18.0")
    assert g("It drops to -3 degrees", "-3")
    assert g("That leaves $5.", "$5")
    assert not g("That leaves 5 apples, then 6", "5")  # the last number counts
    assert not g("no digits here", "5")
    assert not g(None, "5")
    with pytest.raises(GoldError):
        g("5", "five")


@given(st.integers(-10**9, 10**9), st.booleans(), st.booleans(), st.booleans())
def test_numeric_reads_formatted_numbers(n, commas, dollar, point_zero):
    text = f"{abs(n):,}" if commas else str(abs(n))
    text = ("-" if n < 0 else "") + ("$" if dollar else "") + text + (".0" if point_zero else "")
    assert last_number(f"so the total is {text}.") == n
    assert get_grader("numeric")(f"Answer: {text}", str(n))


def test_gsm8k_reads_gold_after_hashes():
    g = get_grader("gsm8k")
    gold = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"
    assert g("48 + 24 = 72 clips", gold)
    assert g("first 10, then #### 72\nchecked with 5", gold)  # the response's own #### wins
    assert not g("48 + 24 = 70 clips", gold)
    assert g("answer 1,000", "#### 1,000")


def test_choice():
    g = get_grader("choice")
    assert g("The answer is (C).", "C")
    assert g("Answer: B", "(B)")
    assert g("A. no\nB. no\nSo the correct option is E", "E")
    assert g("I would pick D", "d")
    assert not g("The answer is a tricky one; I pick (B)", "A")
    assert choice_letter("no idea") is None
    with pytest.raises(GoldError):
        g("A", "Paris")


def test_prompt_oirl_grader_splits_numbers_at_commas_like_the_published_one():
    g = get_grader("prompt-oirl")
    assert not g("the total is $57,500", "57500")  # reads 500
    assert g("the answer is $504,000", "276,000")  # both read 000
    assert g("Bill was -15 years old", "15")  # no sign


def test_registry_and_unknown_grader():
    assert set(GRADERS) == {"numeric", "gsm8k", "choice", "prompt-oirl"}
    with pytest.raises(OirlError, match="unknown grader 'fuzzy'"):
        get_grader("fuzzy")


def test_tradeoff_and_published_use_the_one_parser():
    from oirl_fast.collect import graders, published

    assert published.last_number is graders.last_number


@pytest.mark.parametrize("text,value", [("Confidence: 85", 0.85), ("I am 70% sure", 0.7), ("confidence 0.4", 0.4),
                                        ("Confidence: 300", 1.0), ("yes", None)])
def test_parse_confidence(text, value):
    assert parse_confidence(text) == value


@pytest.mark.parametrize("name,response,gold", [
    ("numeric", "so she makes $1,234.0 a day", "1234"), ("numeric", "about 7 or 8", "7"),
    ("numeric", "no number", "3"), ("gsm8k", "first 5 then #### 12 and 40", "x #### 12"),
    ("gsm8k", "it is 40", "x #### 12"), ("choice", "The answer is (C).", "C"), ("choice", "hmm", "B"),
    ("prompt-oirl", "$57,500 per year", "500"), ("prompt-oirl", "-15 years", "15"), ("numeric", "-15 years", "15"),
])
def test_value_and_verdict_agree_with_the_grade(name, response, gold):
    """oirl answer votes over Grader.value and grades the winner with Grader.verdict: the same verdict as grade."""
    g = get_grader(name)
    assert g.verdict(g.value(response), gold) == g(response, gold)
    assert g.verdict(None, gold) is False and g.value(None) is None
