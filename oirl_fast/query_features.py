"""Cheap, deterministic features of a question's text: its length, its numbers, its number of steps.

They are computable at scoring time from the question alone (never from a gold solution), so
appending them to the query embedding keeps the reward model's query/prompt feature split.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

FEATURE_NAMES = (
    "log_chars",         # log(1 + characters)
    "n_words",
    "n_sentences",       # ., ! and ? ends (decimals excluded)
    "words_per_sentence",
    "n_numbers",         # numerals: 12, 1,200, 3.5, 1/2 counts once
    "n_distinct_numbers",
    "max_log10_number",  # log10(1 + largest numeral)
    "n_decimals",        # numerals with a decimal point or a fraction slash
    "n_number_words",    # one..twelve, half, twice, double, triple, dozen, quarter, third
    "n_percent",
    "n_money",
    "n_operation_cues",  # words that usually cost a step: each, per, every, times, more, less, left, ...
)

_NUMERAL = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_SENTENCE_END = re.compile(r"[.!?](?!\d)")
_WORD = re.compile(r"[A-Za-z']+")
_NUMBER_WORDS = frozenset(
    "one two three four five six seven eight nine ten eleven twelve half twice double triple dozen dozens quarter "
    "third thirds".split())
_CUES = frozenset(
    "each per every times more less fewer left remaining remain remains total altogether average difference "
    "spent spend profit discount increase decrease split share shared rest".split())


def _value(numeral: str) -> float:
    text = numeral.replace(",", "")
    if "/" in text:
        num, den = text.split("/", 1)
        try:
            return float(num) / float(den) if float(den) else float(num)
        except ValueError:
            return 0.0
    try:
        return float(text)
    except ValueError:  # "1,2,3" style runs
        return 0.0


def query_features(texts: Sequence[str]) -> np.ndarray:
    """float32 (len(texts), len(FEATURE_NAMES)): the features of :data:`FEATURE_NAMES`, in that order.

    Pure and deterministic: the same text always gives the same row, whatever else is in the batch."""
    out = np.zeros((len(texts), len(FEATURE_NAMES)), dtype=np.float32)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text #{i} is {type(text).__name__}, not a string")
        words = [w.lower() for w in _WORD.findall(text)]
        numerals = _NUMERAL.findall(text)
        values = [_value(n) for n in numerals]
        n_sent = max(1, len(_SENTENCE_END.findall(text.strip())) or 1)
        out[i] = (
            math.log1p(len(text)),
            len(words),
            n_sent,
            len(words) / n_sent,
            len(numerals),
            len({n.replace(",", "") for n in numerals}),
            math.log10(1.0 + max((abs(v) for v in values), default=0.0)),
            sum(("." in n) or ("/" in n) for n in numerals),
            sum(w in _NUMBER_WORDS for w in words),
            text.count("%") + words.count("percent"),
            text.count("$"),
            sum(w in _CUES for w in words),
        )
    return out
