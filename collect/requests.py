"""What ``oirl collect`` asks: queries, prompts, the (query, prompt, sample) request list, and prompt rendering.

Queries are a JSONL file of ``{"id", "query", "answer"}`` (optional ``dataset`` and
``split``) or a bundled dataset by name (``gsm8k``, ``svamp``, ``mawps``). Prompts are a
JSONL file of ``{"id", "text"}`` with an optional ``placement``:

=========== ==============================================================================
placement   the one user turn sent to the model
=========== ==============================================================================
append      ``query + separator + text`` (default; the published logs used ``question + prompt``)
prepend     ``text + separator + query``
template    ``text`` with ``{query}`` replaced by the query
system      ``text`` as the system message, the query as the user turn
=========== ==============================================================================

``--prompts published`` takes the 16 bundled Prompt-OIRL prompts.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import OirlError
from ..jsonl import iter_objects

PLACEMENTS = ("append", "prepend", "template", "system")
BUNDLED = ("gsm8k", "svamp", "mawps")

CRITIQUE_QUESTION = (
    "Is the answer above correct? Reply with how confident you are that it is correct, "
    "as a number from 0 to 100, in the form 'Confidence: N'."
)


@dataclass(frozen=True)
class QueryItem:
    """One query: id, text, gold answer (None only where gold answers are optional), dataset name, the
    source's split (if any)."""

    id: str
    query: str
    gold: str | None
    dataset: str
    split: str | None = None


@dataclass(frozen=True)
class PromptItem:
    """One prompt: id, text, and where it goes relative to the query (see :data:`PLACEMENTS`)."""

    id: str
    text: str
    placement: str = "append"


@dataclass(frozen=True)
class Request:
    """One LLM call: indices into the query and prompt lists, and the sample number (0..K-1)."""

    query: int
    prompt: int
    sample: int


# --------------------------------------------------------------------------- loading


def _string_field(rec: dict, name: str, path: Path, line: int, required: bool = True) -> str | None:
    value = rec.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise OirlError(f"record lacks {name!r}" if value is None else f"{name!r} is empty", path, line)
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise OirlError(f"{name!r} must be a string or a number, got {type(value).__name__}", path, line)
    return str(value)


def load_queries(spec: str | Path, split: str | None = None, limit: int | None = None,
                 gold_check=None, require_gold: bool = True, fields=None) -> list[QueryItem]:
    """Queries from a JSONL file or a bundled dataset name; optionally one ``split`` and the first ``limit``.

    ``fields`` (a :class:`~oirl_fast.query_rows.QueryFields`): read a benchmark file as it is (JSON lines,
    plain or gzip, CSV or Parquet), its query and id where ``fields`` says (a row without an id gets its
    row number); None: JSON lines of ``{"id", "query"}``.

    ``gold_check(gold)`` (a grader's) raises ``GoldError`` for a gold answer it cannot read:
    that is an OirlError naming the line, before anything is generated. ``require_gold=False``:
    a query without ``answer`` gets gold None (``oirl answer`` on an unlabelled benchmark).
    """
    from ..query_rows import read_rows
    from .graders import GoldError

    spec_s = str(spec)
    items: list[tuple[int | None, QueryItem]] = []
    where: Path | str
    if spec_s in BUNDLED and not Path(spec_s).exists():
        from .published import load_questions

        where = spec_s
        items = [(None, QueryItem(q.query_id, q.query, q.gold, spec_s, q.split)) for q in load_questions(spec_s)]
    else:
        path = Path(spec_s)
        where = path
        if not path.is_file():
            raise OirlError(f"queries file not found (or name a bundled set: {', '.join(BUNDLED)})", path)
        seen: dict[str, int] = {}
        rows = iter_objects(path, "query") if fields is None else read_rows(path)
        for line, rec in rows:
            if fields is None:
                qid = _string_field(rec, "id", path, line)
                text = _string_field(rec, "query", path, line)
            else:  # a benchmark file as it is: its query field or template, its id field or the row number
                try:
                    text = fields.query_of(rec)
                except ValueError as exc:
                    raise OirlError(str(exc), path, line) from None
                rid = fields.id_of(rec)
                qid = str(line) if rid is None else str(rid)
            if rec.get("answer") is None and require_gold:
                raise OirlError("query has no gold answer (field 'answer')", path, line)
            gold = _string_field(rec, "answer", path, line, required=require_gold)
            if qid in seen:
                raise OirlError(f"duplicate query id {qid!r} (first on line {seen[qid]})", path, line)
            seen[qid] = line
            dataset = _string_field(rec, "dataset", path, line, required=False) or path.stem
            items.append((line, QueryItem(qid, text, gold, dataset, _string_field(rec, "split", path, line, False))))
        if not items:
            raise OirlError("queries file holds no queries", path)
    if split is not None:
        items = [(ln, q) for ln, q in items if q.split == split]
        if not items:
            raise OirlError(f"no query has split {split!r}", where)
    if limit is not None:
        items = items[:limit]
    if gold_check is not None:
        for line, q in items:
            if q.gold is None:
                continue
            try:
                gold_check(q.gold)
            except GoldError as exc:
                raise OirlError(f"query {q.id!r}: {exc}", where, line) from None
    return [q for _, q in items]


def load_prompt_set(spec: str | Path) -> list[PromptItem]:
    """Prompts from a JSONL file of ``{"id", "text", "placement"?}``, or ``published`` (the 16 bundled prompts)."""
    spec_s = str(spec)
    if spec_s == "published" and not Path(spec_s).exists():
        from .published import load_prompts

        return [PromptItem(p.id, p.text) for p in load_prompts()]
    path = Path(spec_s)
    if not path.is_file():
        raise OirlError("prompts file not found (or use 'published' for the bundled prompts)", path)
    prompts: list[PromptItem] = []
    seen: dict[str, int] = {}
    for line, rec in iter_objects(path, "prompt"):
        pid = _string_field(rec, "id", path, line)
        if "text" not in rec or not isinstance(rec["text"], str):
            raise OirlError("prompt needs a string 'text' (it may be empty)", path, line)
        placement = rec.get("placement", "append")
        if placement not in PLACEMENTS:
            raise OirlError(f"placement {placement!r} is not one of {', '.join(PLACEMENTS)}", path, line)
        if placement == "template" and "{query}" not in rec["text"]:
            raise OirlError("a 'template' prompt must contain {query}", path, line)
        if pid in seen:
            raise OirlError(f"duplicate prompt id {pid!r} (first on line {seen[pid]})", path, line)
        seen[pid] = line
        prompts.append(PromptItem(pid, rec["text"], placement))
    if not prompts:
        raise OirlError("prompts file holds no prompts", path)
    return prompts


def digest(items: Sequence[Any]) -> str:
    """SHA-256 of a list of dataclasses (canonical JSON): identifies a prompt set or query set."""
    blob = json.dumps([asdict(i) for i in items], sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


# --------------------------------------------------------------------------- requests


def build_requests(n_queries: int, n_prompts: int, samples: int) -> list[Request]:
    """All ``n_queries * n_prompts * samples`` requests, query-major (a query's prompts and samples adjacent,
    which helps vLLM's prefix cache)."""
    return [Request(q, p, s) for q in range(n_queries) for p in range(n_prompts) for s in range(samples)]


def request_key(query: QueryItem, prompt: PromptItem, sample: int) -> tuple[str, str, int]:
    """The identity of a request in shards and the index: (query id, prompt id, sample)."""
    return (query.id, prompt.id, sample)


def request_seed(seed: int, key: tuple[str, str, int]) -> int:
    """A stable 31-bit seed per request, from the run seed and the request key."""
    blob = json.dumps([seed, *key], ensure_ascii=False).encode("utf-8")
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") & 0x7FFFFFFF


# --------------------------------------------------------------------------- rendering


def messages_for(query: QueryItem, prompt: PromptItem, separator: str = "") -> list[dict]:
    """The chat messages of one request (one user turn, or a system turn and a user turn)."""
    if prompt.placement == "append":
        return [{"role": "user", "content": query.query + separator + prompt.text}]
    if prompt.placement == "prepend":
        return [{"role": "user", "content": prompt.text + separator + query.query}]
    if prompt.placement == "template":
        return [{"role": "user", "content": prompt.text.replace("{query}", query.query)}]
    return [{"role": "system", "content": prompt.text}, {"role": "user", "content": query.query}]


def critique_messages(messages: list[dict], response: str) -> list[dict]:
    """The self-critique conversation: the request, the model's answer, and the confidence question."""
    return [*messages, {"role": "assistant", "content": response}, {"role": "user", "content": CRITIQUE_QUESTION}]


def encode(tokenizer, messages: list[dict], chat_template: bool) -> list[int]:
    """Token ids of a conversation, ready for generation.

    With ``chat_template``, the tokenizer's template is applied (``add_generation_prompt``)
    and the text is encoded without adding special tokens again (the template has them).
    Without it, the turns are joined by blank lines and encoded with the tokenizer's
    usual special tokens (e.g. BOS).
    """
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise OirlError("the model's tokenizer has no chat template; pass --no-chat-template")
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    text = "\n\n".join(m["content"] for m in messages)
    return list(tokenizer(text)["input_ids"])


_CONFIDENCE = re.compile(r"confiden\w*\D{0,20}?(\d+(?:\.\d+)?)\s*(%)?", re.IGNORECASE)
_ANY_NUMBER = re.compile(r"(\d+(?:\.\d+)?)\s*(%)?")


def parse_confidence(text: str) -> float | None:
    """Confidence in [0, 1] from a critique answer: "Confidence: 85" -> 0.85, "0.7" -> 0.7; None if no number."""
    m = _CONFIDENCE.search(text) or _ANY_NUMBER.search(text)
    if m is None:
        return None
    value = float(m.group(1))
    if m.group(2) or value > 1:
        value /= 100
    return min(max(value, 0.0), 1.0)
