"""What ``oirl answer`` writes once every query is done: ``answers.jsonl`` (one line per query) and
``report.json`` (accuracy, calls per query, and the best single prompt's when compared).

A line of ``answers.jsonl``::

    {"query_id", "query", "gold",                      # gold null on an unlabelled query
     "calls": [{"prompt_id", "rank", "response", "value", "correct", "critique"}, ...],   # the policy's, in order
     "answer": value or null, "answer_prompt_id", "correct" (null without gold), "n_calls",
     "best_single": {"prompt_id", "response", "value", "correct"}}    # with --compare-best-single

``rank`` 0 is the reward model's top pick; ``value`` is what the grader reads in the response
(a number, or a letter for ``choice``; null when nothing is readable); ``critique`` the model's
confidence in its answer with ``--critique``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, write_text
from ..metrics import paired_bootstrap_ci

ANSWERS = "answers.jsonl"
REPORT = "report.json"


def _json_value(value):
    return float(value) if isinstance(value, (float, np.floating)) else value


def _verdict(grader, value, gold):
    return None if gold is None else bool(grader.verdict(value, gold))


@dataclass(frozen=True)
class FinishedRun:
    """What an answer run ends with, per query u: ``queries[u]`` (a Query), the ``prompts`` (P,)
    (PromptItem, the model's order), the reward model's ``ranking`` (``order`` int (U, P): prompt
    columns best first), ``views[u]`` (the policy's View), ``calls[u]`` (the policy's Calls, in order)
    and ``answered[u]`` (prompt column -> (response, critique) of every prompt asked)."""

    queries: list
    prompts: list
    ranking: object
    views: list
    calls: list
    answered: list


def write_results(cfg, policy, grader, finished: FinishedRun, best_col: int | None, run: dict) -> dict:
    """Write ``answers.jsonl`` and ``report.json`` under ``cfg.out``; return the report. ``best_col``: the
    prompt column of the best single prompt compared with (None: no comparison); ``run``: the run's own
    figures (calls made now and resumed, tokens, seconds, backend), copied into the report."""
    out = Path(cfg.out)
    queries, prompts, ranking, views = finished.queries, finished.prompts, finished.ranking, finished.views
    per_query, answered = finished.calls, finished.answered
    rows, correct, best_correct, n_calls = [], [], [], []
    for u, (q, calls) in enumerate(zip(queries, per_query)):
        cols = [int(ranking.order[u, c.rank]) for c in calls]
        final = policy.final(views[u], calls)
        value = None if final is None else calls[final].value
        row = {
            "query_id": q.id, "query": q.query, "gold": q.gold,
            "calls": [{"prompt_id": prompts[j].id, "rank": c.rank, "response": answered[u][j][0],
                       "value": _json_value(c.value), "correct": _verdict(grader, c.value, q.gold),
                       "critique": c.critique} for c, j in zip(calls, cols)],
            "answer": _json_value(value),
            "answer_prompt_id": None if final is None else prompts[cols[final]].id,
            "correct": _verdict(grader, value, q.gold),
            "n_calls": len(calls),
        }
        if best_col is not None:
            response = answered[u][best_col][0]
            best_value = grader.value(response)
            row["best_single"] = {"prompt_id": prompts[best_col].id, "response": response,
                                  "value": _json_value(best_value), "correct": _verdict(grader, best_value, q.gold)}
            best_correct.append(row["best_single"]["correct"])
        correct.append(row["correct"])
        n_calls.append(len(calls))
        rows.append(row)
    with atomic_path(out / ANSWERS) as tmp:
        with tmp.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    graded = [i for i, c in enumerate(correct) if c is not None]
    distinct = sum(len(a) for a in answered)
    report = {
        "model": str(cfg.model),
        "policy": policy.spec,
        "tradeoff_name": policy.tradeoff_name,
        "queries": len(queries),
        "graded": len(graded),
        "accuracy": float(np.mean([correct[i] for i in graded])) if graded else None,
        "calls_per_query": float(np.mean(n_calls)),
        "critique_calls_per_query": float(np.mean(n_calls)) if cfg.critique else 0.0,
        "unanswered": sum(r["answer"] is None for r in rows),
        "llm_calls": distinct,  # every prompt asked once per query, the comparison's included
        **run,
        "answers": str(out / ANSWERS),
    }
    if best_col is not None:
        report["best_single"] = {"prompt_id": prompts[best_col].id, "calls_per_query": 1.0, "accuracy": None}
        if graded:
            a = np.array([correct[i] for i in graded], dtype=float)
            b = np.array([best_correct[i] for i in graded], dtype=float)
            lo, hi = paired_bootstrap_ci(a, b)
            report["best_single"]["accuracy"] = float(b.mean())
            report["vs_best_single"] = {"diff": float(a.mean() - b.mean()), "ci95": [lo, hi]}
    write_text(out / REPORT, json.dumps(report, indent=2) + "\n")
    return report


def report_lines(report: dict) -> list[str]:
    """The report as a few lines for the terminal."""
    acc = "-" if report["accuracy"] is None else f"{report['accuracy']:.3f} ({report['graded']} graded)"
    lines = [
        f"{report['policy']}: {report['queries']} queries, accuracy {acc}, {report['calls_per_query']:.2f} calls "
        f"per query" + (f" (+ {report['critique_calls_per_query']:.2f} critiques)" if report["critique_calls_per_query"]
                        else ""),
        f"{report['calls_made_now']} LLM calls made now, {report['calls_resumed']} from earlier shards "
        f"({report['backend']}); no answer on {report['unanswered']} queries",
    ]
    best = report.get("best_single")
    if best is not None and best["accuracy"] is not None:
        d = report["vs_best_single"]
        lines.append(f"best single prompt {best['prompt_id']}: accuracy {best['accuracy']:.3f} at 1 call per query; "
                     f"difference {d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] (paired bootstrap 95%)")
    lines.append(f"per-query answers: {report['answers']}")
    return lines
