"""Render evaluation reports: a terminal table, a JSON file and a PNG plot."""
from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .atomic import atomic_path, write_text
from .console import make_console

SELECTORS = [
    ("best_of_n", "reward model, best of 6"),
    ("best_of_n_16", "reward model, best of 16"),
    ("best_single", "best single prompt"),
    ("knn", "kNN (faiss), 6"),
    ("critic", "LLM self-critique, 6"),
    ("critic_16", "LLM self-critique, 16"),
    ("random", "random prompt, 6"),
    ("oracle", "oracle, 6"),
    ("oracle_16", "oracle, 16"),
]


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


def summary_table(summaries: dict[str, dict[str, dict]], title: str = "Best-of-N selection on held-out queries") -> Table:
    """summaries[dataset][protocol] -> the flat summary dict of evaluation.summary()."""
    table = Table(title=title, title_justify="left")
    table.add_column("selector")
    cols = [(ds, proto) for ds, per in summaries.items() for proto in per]
    for ds, proto in cols:
        table.add_column(f"{ds}\n{proto}", justify="right")
    for key, label in SELECTORS:
        table.add_row(label, *[_fmt(summaries[ds][proto].get(key)) for ds, proto in cols])
    table.add_section()
    for key, label in (("best_of_n", "best of 6 - best single, 95% CI"), ("best_of_n_16", "best of 16 - best single, 95% CI")):
        table.add_row(label, *[_fmt_ci(summaries[ds][p].get(f"{key}_diff_ci")) for ds, p in cols])
    if any(summaries[ds][p].get("seeds", 1) > 1 for ds, p in cols):
        for key, label in (("best_of_n", "best of 6, mean ± sd over seeds"), ("best_of_n_16", "best of 16, mean ± sd over seeds")):
            table.add_row(label, *[_fmt_seed(summaries[ds][p], key) for ds, p in cols])
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    bars = [("best_of_n", "reward model (6)"), ("best_of_n_16", "reward model (16)"), ("knn", "kNN (6)"),
            ("critic", "self-critique (6)"), ("random", "random (6)")]
    cols = [(ds, proto) for ds, per in summaries.items() for proto in per]
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
                  label="oracle (6)" if j == 0 else None)
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
    import matplotlib

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
