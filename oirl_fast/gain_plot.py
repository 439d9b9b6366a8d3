"""The forest plot of ``oirl demo``: each policy's gain over the best single prompt, with its 95% CI.

One row per (dataset, split, policy) that a demo summary (``summary.json``, ``oirl demo --json``)
holds, grouped by dataset:

* per protocol (``grouped``, ``published``): the reward model's best-of-N pick over the prompts it
  was trained with ("best of 6") and over every prompt ("best of 16"), against the best single
  prompt of the same set;
* ``transfer``: the same for a model trained on the other datasets only;
* ``crossfit``: the cross-fitted re-rank (every question picked by a model that never saw it): its
  default policy, the near-duplicate vote (the best single prompt unless the question has training
  near-duplicates on which another prompt won), and its default model without the vote;
* ``tradeoff`` ("answers"): the answer policies simulated on logged answers (the reward model's pick,
  votes over its top 3 and 5 prompts), each against the query-independent policy of as many LLM calls
  (the best single prompt; the vote over the prompts best on the training rows).

Gains are in accuracy points (percentage points of questions answered right); the whiskers are the
paired-bootstrap 95% CIs the summary carries. :func:`gain_rows` is pure (for tables and tests);
:func:`plot_gains` draws them (matplotlib: the ``[plot]`` extra). From a shell::

    python -m oirl_fast.gain_plot oirl-demo/summary.json gains.png
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_path
from .extras import require

SECTIONS = ("crossfit", "transfer", "tradeoff")  # summary keys that are not datasets


@dataclass(frozen=True)
class GainRow:
    """One policy's gain over the best single prompt: ``gain`` and ``ci`` (low, high) in accuracy
    points (1.0 = one percent of the questions); ``n``: questions it was measured on."""

    dataset: str
    split: str  # protocol name, "transfer" or "cross-fitted"
    policy: str
    gain: float
    ci: tuple[float, float]
    n: int | None


def _row(dataset, split, policy, value, best, ci, n) -> GainRow | None:
    if value is None or best is None or ci is None:
        return None
    return GainRow(dataset, split, policy, 100.0 * (value - best), (100.0 * ci[0], 100.0 * ci[1]), n)


def _best_of_n_rows(dataset: str, split: str, s: dict) -> list[GainRow]:
    rows = [_row(dataset, split, f"best of {s.get('n_train_prompts')}", s.get("best_of_n"), s.get("best_single"),
                 s.get("best_of_n_diff_ci"), s.get("n_test_queries"))]
    if s.get("n_all_prompts") and s.get("n_all_prompts") != s.get("n_train_prompts"):
        rows.append(_row(dataset, split, f"best of {s['n_all_prompts']}", s.get("best_of_n_all_prompts"),
                         s.get("best_single_all_prompts"), s.get("best_of_n_all_prompts_diff_ci"),
                         s.get("n_test_queries_all_prompts")))
    return [r for r in rows if r is not None]


def _crossfit_rows(dataset: str, c: dict) -> list[GainRow]:
    rows = []
    for suffix, count in (("", c.get("n_prompts")), ("_all_prompts", c.get("n_prompts_all_prompts"))):
        n = c.get(f"n_questions{suffix}")
        rows.append(_row(dataset, "cross-fitted", f"re-rank, near-duplicate vote ({count})", c.get(f"rerank{suffix}"),
                         c.get(f"best_single{suffix}"), c.get(f"rerank_diff_ci{suffix}"), n))
        rows.append(_row(dataset, "cross-fitted", f"re-rank, default model ({count})", c.get(f"default_model{suffix}"),
                         c.get(f"best_single{suffix}"), c.get(f"default_model_diff_ci{suffix}"), n))
    return [r for r in rows if r is not None]


def _answer_rows(dataset: str, t: dict) -> list[GainRow]:
    """The answer policies of the demo's ``tradeoff`` section, each against the fixed prompts of the same calls."""
    rows = []
    for name, p in t.get("policies", {}).items():
        calls = int(round(p["calls_per_query"]))
        against = "best single" if calls == 1 else f"fixed vote {calls}"
        rows.append(_row(dataset, "answers", f"{name} vs {against}", p.get("accuracy"), p.get("reference_accuracy"),
                         p.get("ci95"), t.get("n_queries")))
    return [r for r in rows if r is not None]


def gain_rows(summary: dict) -> list[GainRow]:
    """Every gain with a CI in a demo summary, dataset by dataset (in the summary's order): its
    protocols, then transfer, then the cross-fitted re-rank. Sections it lacks give no rows."""
    datasets = [k for k in summary if k not in SECTIONS]
    for section in SECTIONS:
        datasets += [d for d in summary.get(section, {}) if d not in datasets]
    rows: list[GainRow] = []
    for ds in datasets:
        for proto, s in summary.get(ds, {}).items():
            rows += _best_of_n_rows(ds, proto, s)
        t = summary.get("transfer", {}).get(ds)
        if t and "skipped" not in t:
            rows += _best_of_n_rows(ds, "transfer", t)
        if ds in summary.get("crossfit", {}):
            rows += _crossfit_rows(ds, summary["crossfit"][ds])
        if ds in summary.get("tradeoff", {}):
            rows += _answer_rows(ds, summary["tradeoff"][ds])
    return rows


def plot_gains(summary: dict, path: str | Path, title: str | None = None) -> Path:
    """Draw :func:`gain_rows` of ``summary`` as a forest plot (PNG at ``path``, written atomically)."""
    matplotlib = require("matplotlib", "drawing the figures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = gain_rows(summary)
    if not rows:
        raise ValueError("the summary holds no gain with a confidence interval")
    colors = {"cross-fitted": "tab:green", "transfer": "tab:purple", "published": "tab:orange", "answers": "tab:red"}
    height = 0.32 * len(rows) + 0.35 * len({r.dataset for r in rows}) + 1.3
    fig, ax = plt.subplots(figsize=(8.0, height))
    y, ticks, labels, last = 0.0, [], [], None
    for r in rows:
        if r.dataset != last:
            if last is not None:
                y += 0.6
            ax.text(0.0, y - 0.55, r.dataset, transform=ax.get_yaxis_transform(), fontweight="bold", fontsize=9,
                    ha="left", va="center")
            y += 0.5
            last = r.dataset
        c = colors.get(r.split, "tab:blue")
        ax.errorbar(r.gain, y, xerr=[[r.gain - r.ci[0]], [r.ci[1] - r.gain]], fmt="o", color=c, ms=4, capsize=2.5)
        ticks.append(y)
        labels.append(f"{r.split}: {r.policy}" + (f"  n={r.n}" if r.n else ""))
        y += 1.0
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_ylim(y - 0.3, -1.2)
    ax.set_xlabel("gain over the best single prompt (accuracy points, 95% CI)\n"
                  "answers: over the fixed prompts of as many LLM calls, as named", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title or "Gain over the best single prompt, held-out questions", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - a thin shell entry
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m oirl_fast.gain_plot SUMMARY.json OUT.png", file=sys.stderr)
        return 2
    plot_gains(json.loads(Path(argv[0]).read_text(encoding="utf-8")), argv[1])
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
