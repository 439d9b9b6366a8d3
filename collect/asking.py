"""Asking an LLM one (query, prompt, sample) at a time, in batches: what ``oirl collect`` and ``oirl answer`` share.

An *asker* turns requests into replies::

    asker.ask(requests: list[Ask]) -> list[Reply]      # one reply per request, in order

:class:`LLMAsker` renders each request (:func:`~oirl_fast.collect.requests.messages_for`, the
tokenizer's chat template), generates with a backend (vLLM or transformers) with the request's
own seed, and with ``critique`` asks the model, greedily and in the same conversation, how
confident it is in its answer. ``oirl answer --backend replay:LOG`` answers from a log instead
(:mod:`oirl_fast.answer.replay`) through the same interface.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from .backends import Backend, SamplingConfig
from .requests import (PromptItem, QueryItem, critique_messages, encode, messages_for, parse_confidence,
                       request_key, request_seed)

CRITIQUE_SAMPLING = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=24)


@dataclass(frozen=True)
class Ask:
    """One request: a query, a prompt, and the sample number (0..K-1 for repeated asks)."""

    query: QueryItem
    prompt: PromptItem
    sample: int = 0

    @property
    def key(self) -> tuple[str, str, int]:
        return request_key(self.query, self.prompt, self.sample)


@dataclass(frozen=True)
class Reply:
    """The answer text, tokens generated for it (critique included), and the critique's confidence in [0, 1]
    (None without ``critique`` or when the critique held no number)."""

    text: str
    n_tokens: int
    confidence: float | None = None


class Asker(Protocol):
    name: str

    def ask(self, requests: Sequence[Ask]) -> list[Reply]: ...


class LLMAsker:
    """Requests through a :class:`~oirl_fast.collect.backends.Backend`: rendered, seeded, optionally critiqued.

    Request i's seed is ``request_seed(seed, key_i)``, so a request gets the same seed whichever
    run, batch or command asks it."""

    def __init__(self, backend: Backend, sampling: SamplingConfig, *, seed: int = 0, chat_template: bool = True,
                 separator: str = "", critique: bool = False):
        self.backend, self.sampling, self.seed = backend, sampling, seed
        self.chat_template, self.separator, self.critique = chat_template, separator, critique
        self.name = backend.name
        self._encoded: dict[tuple[str, str], list[int]] = {}  # samples of one (query, prompt) share the rendering

    def ask(self, requests: Sequence[Ask]) -> list[Reply]:
        if not requests:
            return []
        tok = self.backend.tokenizer
        messages = [messages_for(r.query, r.prompt, self.separator) for r in requests]
        ids = []
        for r, msgs in zip(requests, messages):
            pair = (r.query.id, r.prompt.id)
            if pair not in self._encoded:
                self._encoded[pair] = encode(tok, msgs, self.chat_template)
            ids.append(self._encoded[pair])
        seeds = [request_seed(self.seed, r.key) for r in requests]
        gens = self.backend.generate(ids, self.sampling, seeds)
        if not self.critique:
            return [Reply(g.text, g.n_tokens) for g in gens]
        crit_ids = [encode(tok, critique_messages(m, g.text), self.chat_template) for m, g in zip(messages, gens)]
        crit = self.backend.generate(crit_ids, CRITIQUE_SAMPLING, seeds)
        return [Reply(g.text, g.n_tokens + c.n_tokens, parse_confidence(c.text)) for g, c in zip(gens, crit)]


__all__ = ["Ask", "Asker", "CRITIQUE_SAMPLING", "LLMAsker", "Reply"]
