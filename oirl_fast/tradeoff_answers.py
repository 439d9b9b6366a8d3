"""The logged answers ``oirl tradeoff`` simulates policies on: every prompt's numeric answer to each
test query, from the bundled GSM8K answer logs or from a log that keeps its responses."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from .collect.graders import last_number
from .collect.published import import_published, load_gsm8k_answers, load_prompts
from .errors import OirlError
from .schema import read_logs
from .splits import Protocol, split_log


@dataclass(frozen=True)
class AnswerSource:
    """Where ``oirl tradeoff`` takes its logged answers from: ``log`` (any oirl log whose ``response``
    column keeps the answers; its test queries under the model's protocol) or else the bundled answer
    logs of ``dataset`` (gsm8k only) in ``source`` (the data folder; None: the bundled copy);
    ``limit``: only the first ``limit`` test queries (None: all)."""

    dataset: str = "gsm8k"
    source: object = None
    log: object = None
    limit: int | None = None


@dataclass
class AnswerTable:
    """Logged answers of every prompt on a set of test queries.

    queries (U,), gold float (U,), values float (U, P) numeric answers (NaN if none),
    verdicts bool (U, P) the log's own grading, prompt_ids (P,), train_accuracy float (P,)
    each prompt's accuracy on the training rows (NaN where it has none); best_single its argmax;
    query_ids (U,).
    """

    queries: list
    gold: np.ndarray
    values: np.ndarray
    verdicts: np.ndarray
    prompt_ids: list
    train_accuracy: np.ndarray
    query_ids: list

    @property
    def best_single(self) -> int:
        return int(np.nanargmax(self.train_accuracy))

    def in_order(self, prompt_ids: list) -> "AnswerTable":
        """The same answers with the prompt columns in the order of ``prompt_ids`` (a permutation of them)."""
        cols = [self.prompt_ids.index(p) for p in prompt_ids]
        return AnswerTable(self.queries, self.gold, self.values[:, cols], self.verdicts[:, cols], list(prompt_ids),
                           self.train_accuracy[cols], self.query_ids)


def _number(text) -> float:

    x = None if text is None else last_number(str(text))
    return np.nan if x is None else x


def published_answers(source, limit: int | None) -> AnswerTable:
    """GSM8K test queries of the bundled answer logs (the first ``limit``), every prompt's numeric answer."""
    prompts = load_prompts(source)
    ids = [p.id for p in prompts]
    log = import_published("gsm8k", source)
    test = log.filter(pc.equal(log.column("split"), "test"))
    first = test.filter(pc.equal(test.column("prompt_id"), ids[0]))
    U = first.num_rows if limit is None else max(1, min(limit, first.num_rows))
    values = np.full((U, len(ids)), np.nan)
    verdicts = np.zeros((U, len(ids)), bool)
    for j, p in enumerate(prompts):
        values[:, j] = [_number(a) for a in load_gsm8k_answers(p, source)[:U]]
        verdicts[:, j] = test.filter(pc.equal(test.column("prompt_id"), p.id)).column("correct").to_pylist()[:U]
    train = log.filter(pc.equal(log.column("split"), "train"))
    acc = np.full(len(ids), np.nan)
    for j, p in enumerate(prompts):
        if p.role == "train":
            acc[j] = np.mean(train.filter(pc.equal(train.column("prompt_id"), p.id)).column("correct").to_numpy())
    return AnswerTable(first.column("query").to_pylist()[:U], np.array([float(g) for g in first.column("gold").to_pylist()[:U]]),
                       values, verdicts, ids, acc, first.column("query_id").to_pylist()[:U])


def log_answers(log_path, protocol: dict, prompt_ids: list, limit: int | None) -> AnswerTable:
    """Answers from a log with a ``response`` column (e.g. collected with oirl collect), on the
    test queries of the model's own protocol, so the model never saw them."""

    table = read_logs(log_path)
    responses = table.column("response")
    if responses.null_count == table.num_rows:
        raise OirlError("the log keeps no responses (column 'response' is empty), so answers cannot be voted over; "
                        "collect with responses kept", log_path)
    split = split_log(table, Protocol(**protocol))
    rows = split.test.to_pylist()
    cells: dict = {}
    for r in rows:
        if r["response"] is not None and r["prompt_id"] in prompt_ids:
            cells.setdefault(r["query_id"], {}).setdefault(r["prompt_id"], r)
    complete = [q for q, per in cells.items() if len(per) == len(prompt_ids)]
    if not complete:
        raise OirlError("no test query has a logged response for every prompt of the model", log_path)
    complete = complete[:limit] if limit else complete
    first = [cells[q][prompt_ids[0]] for q in complete]
    try:
        gold = np.array([float(str(r["gold"]).replace(",", "")) for r in first])
    except ValueError:
        raise OirlError("votes compare numbers, but some gold answers are not numeric", log_path) from None
    values = np.array([[_number(cells[q][p]["response"]) for p in prompt_ids] for q in complete])
    verdicts = np.array([[cells[q][p]["correct"] for p in prompt_ids] for q in complete])
    return AnswerTable([r["query"] for r in first], gold, values, verdicts, list(prompt_ids),
                       train_accuracy(split, prompt_ids), list(complete))


def train_accuracy(split, prompt_ids: list) -> np.ndarray:
    """float (P,): each prompt's accuracy on the training rows of ``split`` (a :func:`split_log` result),
    NaN where a prompt has none. The best single prompt is its argmax (first on a tie)."""
    correct = np.array(split.train.column("correct").to_pylist(), dtype=float)
    pids = split.train.column("prompt_id").to_pylist()
    return np.array([correct[[x == p for x in pids]].mean() if p in split.train_prompt_ids else np.nan
                     for p in prompt_ids])
