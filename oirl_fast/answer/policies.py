"""Answering policies: which of a query's ranked prompts to ask the LLM, and which answer to give.

A policy sees one query at a time: how many prompts the reward model ranked, the calibrated
confidence of its top pick (as ``oirl tradeoff`` defines it: the model's calibrator applied to
the top score), and the answers of the calls made so far, in the order they were made. It says
which ranks to ask next (0 = the top pick; an empty list = done) and, once done, the final answer.
Policies are pure functions of what they see, so a resumed run re-derives every query's state
from the calls its shards hold, and the replay backend reproduces ``oirl tradeoff``'s simulation.

========================= ================================================================= ==============
``--policy``              what                                                              calls
========================= ================================================================= ==============
``best``                  the top pick                                                      1
``vote:K``                the top K picks; majority over their answer values, a tie going   K
                          to the value of the better-ranked prompt (AMA)
``cascade:K:T``           the top pick; where its calibrated confidence is below T, the     1 or K + 1
                          next K picks too, then a vote over the K + 1 answers (tradeoff's
                          ``cascade K, T``). The confidence is the top pick's, so the next
                          K are asked together
``retry:K``               the top pick; while the answer has no readable value, or the      1 to K + 1
                          model's own critique (``--critique``) puts it below the critique
                          threshold, the next-best pick, at most K more (Reflexion)
========================= ================================================================= ==============

Adding a policy is one class here with the :func:`policy` decorator.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence

from ..errors import OirlError


@dataclass(frozen=True)
class Call:
    """One answered call as a policy sees it: the prompt's rank (0 = top pick), the answer's value
    (None: nothing readable) and the critique's confidence in [0, 1] (None: no critique, or no number)."""

    rank: int
    value: Hashable | None
    critique: float | None = None


@dataclass(frozen=True)
class View:
    """What a policy knows of a query before asking: ``n_prompts`` ranked, the calibrated ``confidence``
    of the top pick, and the ``critique_threshold`` below which a critique says the answer is wrong."""

    n_prompts: int
    confidence: float
    critique_threshold: float = 0.5


def majority(values: Sequence[Hashable | None]) -> int | None:
    """Index of the winning answer among ``values`` (best-ranked first; None does not vote): the most
    frequent value, a tie going to the value that appears first. None when no value is readable.

    This is the one voting rule: ``oirl tradeoff``'s :func:`~oirl_fast.tradeoff.vote` uses it too."""
    counts: dict = {}
    first: dict = {}
    for i, v in enumerate(values):
        if v is None:
            continue
        counts[v] = counts.get(v, 0) + 1
        first.setdefault(v, i)
    if not counts:
        return None
    best = max(counts, key=lambda v: (counts[v], -first[v]))
    return first[best]


class Policy:
    """Base class: ``next_ranks(view, calls)`` -> ranks to ask now ([] = done); ``final(view, calls)`` -> the
    index into ``calls`` of the answer given (None = no answer); ``max_calls`` the most calls it can make."""

    name: str = ""
    spec: str = ""
    max_calls: int = 1

    def next_ranks(self, view: View, calls: Sequence[Call]) -> list[int]:
        raise NotImplementedError

    def final(self, view: View, calls: Sequence[Call]) -> int | None:
        raise NotImplementedError

    @property
    def tradeoff_name(self) -> str | None:
        """The name of the same policy in ``oirl tradeoff``'s report (None: tradeoff does not simulate it)."""
        return None


REGISTRY: dict[str, tuple[type[Policy], str, str]] = {}


def policy(name: str, usage: str, summary: str):
    """Register a policy class under ``name`` (``usage`` such as ``vote:K``; ``summary`` one line for --help)."""
    def register(cls):
        cls.name = name
        REGISTRY[name] = (cls, usage, summary)
        return cls
    return register


def _int(text: str, what: str, spec: str, low: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        raise OirlError(f"policy {spec!r}: {what} must be an integer, got {text!r}") from None
    if value < low:
        raise OirlError(f"policy {spec!r}: {what} must be at least {low}, got {value}")
    return value


def _threshold(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise OirlError(f"policy {spec!r}: T must be a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise OirlError(f"policy {spec!r}: T is a probability, between 0 and 1, got {value}")
    return value


@policy("best", "best", "the reward model's top pick (1 call)")
class Best(Policy):
    def __init__(self, spec: str, args: list[str]):
        if args:
            raise OirlError(f"policy {spec!r}: best takes no parameter")
        self.spec = "best"

    def next_ranks(self, view, calls):
        return [] if calls else [0]

    def final(self, view, calls):
        return 0 if calls and calls[0].value is not None else None

    @property
    def tradeoff_name(self):
        return "reward model"


@policy("vote", "vote:K", "majority over the answers of the top K picks, ties to the better-ranked (K calls)")
class Vote(Policy):
    def __init__(self, spec: str, args: list[str]):
        if len(args) != 1:
            raise OirlError(f"policy {spec!r}: write vote:K, e.g. vote:5")
        self.k = _int(args[0], "K", spec)
        self.spec, self.max_calls = f"vote:{self.k}", self.k

    def next_ranks(self, view, calls):
        return [] if calls else list(range(min(self.k, view.n_prompts)))

    def final(self, view, calls):
        return majority([c.value for c in calls])

    @property
    def tradeoff_name(self):
        return f"vote {self.k} (reward model)"


@policy("cascade", "cascade:K:T",
        "the top pick; below calibrated confidence T, the next K picks too and a vote (1 or K+1 calls)")
class Cascade(Policy):
    def __init__(self, spec: str, args: list[str]):
        if len(args) != 2:
            raise OirlError(f"policy {spec!r}: write cascade:K:T, e.g. cascade:3:0.3")
        self.k, self.t = _int(args[0], "K", spec), _threshold(args[1], spec)
        self.spec, self.max_calls = f"cascade:{self.k}:{self.t:g}", self.k + 1

    def next_ranks(self, view, calls):
        if not calls:
            return [0]
        if len(calls) == 1 and view.confidence < self.t:
            return list(range(1, min(self.k + 1, view.n_prompts)))
        return []

    def final(self, view, calls):
        return majority([c.value for c in calls])

    @property
    def tradeoff_name(self):
        return f"cascade {self.k}, T={self.t}"


@policy("retry", "retry:K",
        "the top pick; on an unreadable answer or a critique below the threshold, the next pick, K more at most")
class Retry(Policy):
    def __init__(self, spec: str, args: list[str]):
        if len(args) != 1:
            raise OirlError(f"policy {spec!r}: write retry:K, e.g. retry:2")
        self.k = _int(args[0], "K", spec)
        self.spec, self.max_calls = f"retry:{self.k}", self.k + 1

    @staticmethod
    def accepted(view: View, call: Call) -> bool:
        """An answer is kept when it has a value and no critique says it is wrong."""
        return call.value is not None and (call.critique is None or call.critique >= view.critique_threshold)

    def next_ranks(self, view, calls):
        if not calls:
            return [0]
        if self.accepted(view, calls[-1]) or len(calls) >= min(self.k + 1, view.n_prompts):
            return []
        return [calls[-1].rank + 1]

    def final(self, view, calls):
        if calls and self.accepted(view, calls[-1]):
            return len(calls) - 1
        # none was accepted: the readable answer the critique doubted least, the better-ranked on a tie
        readable = [i for i, c in enumerate(calls) if c.value is not None]
        if not readable:
            return None
        return max(readable, key=lambda i: (-1.0 if calls[i].critique is None else calls[i].critique, -i))


def parse_policy(spec: str) -> Policy:
    """The policy a ``--policy`` string names (``best``, ``vote:5``, ``cascade:3:0.3``, ``retry:2``)."""
    name, *args = str(spec).strip().split(":")
    if name not in REGISTRY:
        raise OirlError(f"unknown policy {spec!r}; choose one of {', '.join(u for _, u, _ in REGISTRY.values())}")
    return REGISTRY[name][0](spec, args)


def policies_help() -> str:
    """One line per registered policy, for --help."""
    return "; ".join(f"{usage}: {summary}" for _, usage, summary in REGISTRY.values())


__all__ = ["Call", "View", "Policy", "REGISTRY", "majority", "parse_policy", "policies_help", "policy"]
