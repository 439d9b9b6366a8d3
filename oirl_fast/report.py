"""Render evaluation reports: a terminal table, a JSON file and a PNG plot."""
from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .extras import require
from .atomic import atomic_path, write_text
from .console import make_console

# Row labels name the prompt counts: {train} = the training prompts, {all} = all prompts (held-out ones too).
SELECTORS = [
    ("best_of_n", "reward model, best of {train}"),
    ("best_of_n_all_prompts", "reward model, best of {all}"),
    ("best_single", "best single prompt"),
    ("knn", "kNN (faiss), {train}"),
    ("critic", "LLM self-critique, {train}"),
    ("critic_all_prompts", "LLM self-critique, {all}"),
    ("random", "random prompt, {train}"),
    ("oracle", "oracle, {train}"),
    ("oracle_all_prompts", "oracle, {all}"),
]


def prompt_counts(rows) -> dict[str, str]:
    """{"train": ..., "all": ...} for row labels: the count the summaries ``rows`` share, else "N" / "all"."""
    def common(key: str, fallback: str) -> str:
        counts = {r.get(key) for r in rows} - {None}
        return str(counts.pop()) if len(counts) == 1 else fallback

    return {"train": common("n_train_prompts", "N"), "all": common("n_all_prompts", "all")}


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _fmt_ci(ci) -> str:
    return "-" if ci is None else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _fmt_seed(s: dict, key: str) -> str:
    mean, sd = s.get(f"{key}_seed_mean"), s.get(f"{key}_seed_std")
    return "-" if mean is None else f"{mean:.3f} ± {sd:.3f} (n={s['seeds']})"


def _fmt_headroom(h) -> str:
    if not h:
        return "-"
    share = "-" if h["captured_share"] is None else f"{h['captured_share']:.0%}"
    return f"{h['ceiling']:.3f} ({share})"


def summary_line(s: dict, best_single: str = "best single") -> str:
    """One line of a (dataset, protocol) summary (``evaluation.summary``), as the CLI prints while it works."""
    ci = s["best_of_n_diff_ci"]
    return (f"best of {s['n_train_prompts']} {s['best_of_n']:.3f}, {best_single} {s['best_single']:.3f} "
            f"(difference 95% CI [{ci[0]:+.3f}, {ci[1]:+.3f}]), oracle {s['oracle']:.3f}")


def summary_table(summaries: dict[str, dict[str, dict]], title: str = "Best-of-N selection on held-out queries") -> Table:
    """summaries[dataset][protocol] -> the flat summary dict of evaluation.summary()."""
    table = Table(title=title, title_justify="left")
    table.add_column("selector")
    cols = [(ds, proto) for ds, per in summaries.items() for proto in per]
    for ds, proto in cols:
        table.add_column(f"{ds}\n{proto}", justify="right")
    n = prompt_counts([summaries[ds][p] for ds, p in cols])
    for key, label in SELECTORS:
        table.add_row(label.format(**n), *[_fmt(summaries[ds][proto].get(key)) for ds, proto in cols])
    table.add_section()
    best_of = (("best_of_n", f"best of {n['train']}"), ("best_of_n_all_prompts", f"best of {n['all']}"))
    for key, label in best_of:
        table.add_row(f"{label} - best single, 95% CI",
                      *[_fmt_ci(summaries[ds][p].get(f"{key}_diff_ci")) for ds, p in cols])
    if any(summaries[ds][p].get("seeds", 1) > 1 for ds, p in cols):
        for key, label in best_of:
            table.add_row(f"{label}, mean ± sd over seeds", *[_fmt_seed(summaries[ds][p], key) for ds, p in cols])
    table.add_row("known-question ceiling (share captured)", *[_fmt_headroom(summaries[ds][p].get("headroom")) for ds, p in cols])
    table.add_row("reward model AUC (train prompts)", *[_fmt(summaries[ds][p]["auc"]) for ds, p in cols])
    table.add_row("reward model AUC (held-out prompts)", *[_fmt(summaries[ds][p].get("auc_heldout")) for ds, p in cols])
    table.add_row("test queries", *[str(summaries[ds][p]["n_test_queries"]) for ds, p in cols])
    table.add_row("test queries also in train (exact)", *[str(summaries[ds][p]["test_in_train"]) for ds, p in cols])
    table.add_row(
        "test queries with a train neighbour, cos >= 0.95",
        *[str(summaries[ds][p]["test_near_duplicate"]) for ds, p in cols],
    )
    return table


def print_summary(summaries: dict, console: Console | None = None) -> None:
    console = console or make_console(stderr=False)
    if not console.is_terminal:
        # Off a terminal rich assumes 80 columns, which folds every cell; the table needs ~130.
        console = make_console(file=console.file, width=max(console.width, 140))
    console.print(summary_table(summaries))


def write_json(obj, path: str | Path) -> Path:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=float) + "\n")
    return Path(path)


def plot_summary(summaries: dict[str, dict[str, dict]], path: str | Path) -> Path:
    """Bar chart: accuracy of each selector per (dataset, protocol), oracle and best single as lines."""
    matplotlib = require("matplotlib", "drawing the figures")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols = [(ds, proto) for ds, per in summaries.items() for proto in per]
    n = prompt_counts([summaries[ds][p] for ds, p in cols])
    bars = [("best_of_n", f"reward model ({n['train']})"), ("best_of_n_all_prompts", f"reward model ({n['all']})"),
            ("knn", f"kNN ({n['train']})"), ("critic", f"self-critique ({n['train']})"),
            ("random", f"random ({n['train']})")]
    fig, ax = plt.subplots(figsize=(2.2 * len(cols) + 2, 4.5))
    width = 0.8 / len(bars)
    x = np.arange(len(cols))
    for k, (key, label) in enumerate(bars):
        vals = [summaries[ds][p].get(key) or np.nan for ds, p in cols]
        ax.bar(x - 0.4 + (k + 0.5) * width, vals, width, label=label)
    for j, (ds, p) in enumerate(cols):
        s = summaries[ds][p]
        ax.hlines(s["best_single"], j - 0.45, j + 0.45, colors="black", linestyles="--",
                  label="best single prompt" if j == 0 else None)
        ax.hlines(s["oracle"], j - 0.45, j + 0.45, colors="grey", linestyles=":",
                  label=f"oracle ({n['train']})" if j == 0 else None)
    ax.set_xticks(x, [f"{ds}\n{p}" for ds, p in cols])
    ax.set_ylabel("accuracy of the selected prompt")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.set_title("Best-of-N prompt selection on held-out queries")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)


def plot_reliability(report: dict, path: str | Path) -> Path:
    """Reliability diagram of the reward model on test rows (training prompts): raw and calibrated."""
    matplotlib = require("matplotlib", "drawing the figures")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for key, style in (("raw", "o-"), ("calibrated", "s-")):
        c = report["calibration"].get(key)
        if c is None:
            continue
        pts = [(m, o) for m, o, n in zip(c["mean_predicted"], c["observed"], c["count"]) if n > 0]
        ax.plot([m for m, _ in pts], [o for _, o in pts], style, label=f"{key} (ECE {c['ece']:.3f})")
    ax.set_xlabel("predicted probability of a correct answer")
    ax.set_ylabel("observed rate")
    ax.set_title(f"{report['dataset']} {report['protocol']['name']}: reliability on test rows", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
