"""Answer graders: pure functions ``grade(response, gold) -> bool`` and a registry by name.

This module holds the project's one number parser, :func:`last_number`, used by the
graders, by ``oirl tradeoff`` (votes over numeric answers) and re-exported by
:mod:`oirl_fast.collect.published`.

========== ====================================================================================
grader     verdict
========== ====================================================================================
numeric    the last number in the response equals the gold number (commas, ``$``, a sign
           and a trailing ``.0`` tolerated on both sides; compared as floats, 1e-6 absolute)
gsm8k      as ``numeric``, but the gold may be a full GSM8K solution (the number after its last
           ``####`` is taken) and a response with a ``####`` is read there (the first number after it)
choice     the response's answer letter (A-E: "answer is (C)", "Answer: C", a lone "C" at the
           end, ...) equals the gold letter; for multiple-choice sets such as MedQA
prompt-oirl the published Prompt-OIRL grader, reproduced: the last run of digits (no sign,
           a comma ends the number) in the response and in the gold text must be equal. It
           agrees with every published GSM8K verdict; kept to compare against old logs
========== ====================================================================================

A gold answer a grader cannot read (no number for ``numeric``, no letter for
``choice``) is a :class:`GoldError`, raised by :meth:`Grader.check_gold` before any
generation, so a bad query file fails fast.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_LEGACY_NUMBER = re.compile(r"\d+\.?\d*")
_HASHES = "####"
ATOL = 1e-6


def last_number(text: str) -> float | None:
    """The last number in ``text`` (commas, ``$``, a sign and a trailing ``.0`` tolerated), or None.

    >>> last_number("so she makes $1,234.0 a day")
    1234.0
    """
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", "").replace("$", ""))
    except ValueError:
        return None


class GoldError(ValueError):
    """The gold answer cannot be read by this grader (message says why)."""


def _same(x: float | None, y: float | None) -> bool:
    return x is not None and y is not None and abs(x - y) <= ATOL


# --------------------------------------------------------------------------- numeric / gsm8k


def numeric_gold(gold: str) -> float:
    x = last_number(str(gold))
    if x is None:
        raise GoldError(f"gold answer {gold!r} holds no number")
    return x


def grade_numeric(response: str, gold: str) -> bool:
    """Last number of the response equals the gold number."""
    return _same(last_number(response), numeric_gold(gold))


def gsm8k_gold(gold: str) -> float:
    text = str(gold)
    if _HASHES in text:
        text = text.rsplit(_HASHES, 1)[1]
    return numeric_gold(text)


def first_number(text: str) -> float | None:
    """The first number in ``text``, read like :func:`last_number`."""
    found = _NUMBER.search(text)
    return None if found is None else last_number(found.group(0))


def gsm8k_value(response: str) -> float | None:
    """The first number after the response's own last ``####`` if it has one, else its last number."""
    return first_number(response.rsplit(_HASHES, 1)[1]) if _HASHES in response else last_number(response)


def grade_gsm8k(response: str, gold: str) -> bool:
    """GSM8K: gold after ``####`` (or the whole gold) against :func:`gsm8k_value` of the response."""
    return _same(gsm8k_value(response), gsm8k_gold(gold))


# --------------------------------------------------------------------------- choice

CHOICES = "ABCDE"
_CHOICE_PATTERNS = [
    # "the answer is (C)", "Answer: C", "correct option is C."
    re.compile(r"(?i:answer|option|choice)\s*(?i:is|:)?\s*(?i:option\s*)?\(?([A-E])\b\)?"),
    # "(C)" anywhere
    re.compile(r"\(([A-E])\)"),
    # "C." / "C)" / "C:" at the start of a line
    re.compile(r"^\s*([A-E])[.):]", re.MULTILINE),
    # a lone capital letter as the last word
    re.compile(r"\b([A-E])\b\W*$"),
]


def choice_letter(text: str) -> str | None:
    """The answer letter A-E in a response, or None; the last match of the most explicit pattern wins."""
    for pattern in _CHOICE_PATTERNS:
        found = pattern.findall(text)
        if found:
            return found[-1].upper()
    return None


def choice_gold(gold: str) -> str:
    text = str(gold).strip()
    m = re.fullmatch(r"\(?([A-Ea-e])\)?[.:]?", text)
    letter = m.group(1).upper() if m else choice_letter(text)
    if letter is None:
        raise GoldError(f"gold answer {gold!r} is not a letter A-E")
    return letter


def grade_choice(response: str, gold: str) -> bool:
    """The response's answer letter equals the gold letter."""
    return choice_letter(response) == choice_gold(gold)


# --------------------------------------------------------------------------- prompt-oirl (legacy)


def _legacy_number(text: str) -> float | None:
    found = _LEGACY_NUMBER.findall(text)
    return float(found[-1]) if found else None


def legacy_gold(gold: str) -> float:
    text = str(gold)
    if _HASHES in text:
        text = text.rsplit(_HASHES, 1)[1]
    x = _legacy_number(text)
    if x is None:
        raise GoldError(f"gold answer {gold!r} holds no number")
    return x


def grade_legacy(response: str, gold: str) -> bool:
    """The published Prompt-OIRL grader: last unsigned, comma-less digit run on both sides."""
    x = _legacy_number(response)
    return x is not None and x == legacy_gold(gold)


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Grader:
    """A named grader: ``grade(response, gold) -> bool``; ``check_gold(gold)`` raises GoldError if unreadable,
    else returns the gold's value; ``extract(response)`` is the answer's value (a float, or a letter for
    ``choice``; None when it has none), the thing votes count: ``grade(r, g) == verdict(extract(r), g)``."""

    name: str
    grade: Callable[[str, str], bool]
    check_gold: Callable[[str], object]
    help: str
    extract: Callable[[str], object]

    def __call__(self, response: str | None, gold: str) -> bool:
        """Verdict for one response; a missing response is wrong."""
        return response is not None and bool(self.grade(response, gold))

    def value(self, response: str | None):
        """The answer value of a response (None: no answer could be read)."""
        return None if response is None else self.extract(response)

    def verdict(self, value, gold: str) -> bool:
        """Whether an answer value (from :meth:`value`) equals the gold answer; None is wrong."""
        expected = self.check_gold(gold)
        if isinstance(expected, float):
            return _same(value, expected)
        return value is not None and value == expected


GRADERS: dict[str, Grader] = {
    g.name: g
    for g in (
        Grader("numeric", grade_numeric, numeric_gold, "last number in the answer vs the gold number", last_number),
        Grader("gsm8k", grade_gsm8k, gsm8k_gold, "gold after ####; answer after its #### or its last number",
               gsm8k_value),
        Grader("choice", grade_choice, choice_gold, "answer letter A-E vs the gold letter", choice_letter),
        Grader("prompt-oirl", grade_legacy, legacy_gold, "the published grader: last unsigned digit run, commas split",
               _legacy_number),
    )
}


def get_grader(name: str) -> Grader:
    """The grader called ``name``; an unknown name is an OirlError listing the choices."""
    from ..errors import OirlError

    try:
        return GRADERS[name]
    except KeyError:
        raise OirlError(f"unknown grader {name!r}; choose one of {', '.join(GRADERS)}") from None


__all__ = ["GRADERS", "Grader", "GoldError", "choice_letter", "get_grader", "last_number"]
