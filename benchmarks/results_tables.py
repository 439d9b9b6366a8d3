"""Print the results tables (Markdown) of the README and the docs from the summary.json of `oirl demo` runs,
or from the output of `oirl tradeoff --json`.

    python benchmarks/results_tables.py oirl-study/summary.json
    python benchmarks/results_tables.py static=/tmp/demo-static/summary.json minilm=/tmp/demo-minilm/summary.json
    oirl tradeoff --seeds 5 --json > tradeoff.json && python benchmarks/results_tables.py tradeoff.json
    python benchmarks/results_tables.py mawps-report.json svamp-report.json   # `oirl rerank --report-json` files
    python benchmarks/results_tables.py --pages docs/results/tables --readme README.md docs/results/data/demo-summary.json

``--pages DIR`` writes the tables of one demo summary as Markdown fragments for the docs site (which
includes them in its results pages) and the README's short table, instead of printing them;
``--readme README.md`` also puts that short table into the README.

The first summary gives the main table (every dataset and protocol) and, when it has
them, the transfer table (leave-one-dataset-out) and the cross-fitting table (`crossfit`:
every question of each log picked by models that never saw it). With two or more summaries a
side-by-side table compares them cell by cell. Every figure is read from the files:
nothing here is typed in by hand.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from oirl_fast.gain_plot import SECTIONS  # the summary's keys that are not datasets


def _f(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ci(ci) -> str:
    return "-" if not ci else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _mean_sd(mean, sd) -> str:
    return "-" if mean is None else f"{mean:.3f} ± {sd or 0.0:.3f}"


def _headroom(h) -> str:
    if not h or h.get("ceiling") is None:
        return "-"
    share = h.get("captured_share")
    return f"{h['best_single']:.3f} → {h['ceiling']:.3f} ({'-' if share is None else f'{share:.0%}'})"


MAIN_ROWS = [  # {train}: the training prompts' count, {all}: all prompts' count
    ("reward model, best of {train} (seed 0)", lambda s: _f(s["best_of_n"])),
    ("reward model, best of {all} (seed 0)", lambda s: _f(s.get("best_of_n_all_prompts"))),
    ("best single prompt (chosen on train)", lambda s: _f(s["best_single"])),
    ("kNN, faiss, k=50 ({train})", lambda s: _f(s["knn"])),
    ("LLM self-critique ({train})", lambda s: _f(s.get("critic"))),
    ("LLM self-critique ({all})", lambda s: _f(s.get("critic_all_prompts"))),
    ("random prompt ({train})", lambda s: _f(s["random"])),
    ("oracle ({train})", lambda s: _f(s["oracle"])),
    ("oracle ({all})", lambda s: _f(s.get("oracle_all_prompts"))),
    ("best of {train} minus best single, paired-bootstrap 95% CI", lambda s: _ci(s["best_of_n_diff_ci"])),
    ("best of {all} minus best single, 95% CI", lambda s: _ci(s.get("best_of_n_all_prompts_diff_ci"))),
    ("best of {train}, mean ± sd over seeds", lambda s: _mean_sd(s.get("best_of_n_seed_mean"), s.get("best_of_n_seed_std"))),
    ("best of {all}, mean ± sd over seeds",
     lambda s: _mean_sd(s.get("best_of_n_all_prompts_seed_mean"), s.get("best_of_n_all_prompts_seed_std"))),
    ("known-question ceiling: best single → ceiling (share the model captures)", lambda s: _headroom(s.get("headroom"))),
    ("ECE on test rows (training prompts), raw → isotonic",
     lambda s: f"{_f(s.get('ece'))} → {_f(s.get('ece_calibrated'))}"),
    ("AUC, training prompts", lambda s: _f(s["auc"])),
    ("AUC, held-out prompts", lambda s: _f(s.get("auc_heldout"))),
    ("test queries", lambda s: str(s["n_test_queries"])),
    ("test queries the model trained on (exact)", lambda s: str(s["test_in_train"])),
    ("... with a train neighbour at cos >= 0.95", lambda s: str(s["test_near_duplicate"])),
]

# summary.json files written before the counts became fields named them in their keys (6 and 16 prompts)
LEGACY_KEYS = {f"{old}_16{rest}": f"{old}_all_prompts{rest}" for old, rest in (
    ("best_of_n", ""), ("oracle", ""), ("critic", ""), ("random", ""), ("best_single", ""),
    ("n_test_queries", ""), ("best_of_n", "_diff_ci"), ("best_of_n", "_seed_mean"), ("best_of_n", "_seed_std"))}


def upgrade(summary: dict) -> dict:
    """One (dataset, protocol) summary with the current keys, whichever oirl-fast wrote it."""
    if not any(k in summary for k in LEGACY_KEYS):
        return summary
    out = {LEGACY_KEYS.get(k, k): v for k, v in summary.items()}
    out.setdefault("n_train_prompts", 6)
    out.setdefault("n_all_prompts", 16 if out.get("best_of_n_all_prompts") is not None else None)
    return out


def prompt_counts(summaries) -> dict[str, str]:
    """{"train": ..., "all": ...} for labels: the count every summary shares, else "N" / "all"."""
    def common(key: str, fallback: str) -> str:
        counts = {s.get(key) for s in summaries} - {None}
        return str(counts.pop()) if len(counts) == 1 else fallback

    return {"train": common("n_train_prompts", "N"), "all": common("n_all_prompts", "all")}


def _cells(summary: dict) -> list[tuple[str, dict]]:
    return [(f"{ds} {proto}", upgrade(s)) for ds, by_proto in summary.items() if ds not in SECTIONS
            for proto, s in by_proto.items()]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main_table(summary: dict) -> str:
    cells = _cells(summary)
    seeds = {s.get("seeds") for _, s in cells}
    n = prompt_counts([s for _, s in cells])
    rows = [[label.format(**n)] + [fn(s) for _, s in cells] for label, fn in MAIN_ROWS]
    return f"Seeds per split: {', '.join(map(str, sorted(seeds)))}\n\n" + _table([""] + [c for c, _ in cells], rows)


def transfer_table(transfer: dict) -> str:
    transfer = {ds: upgrade(s) for ds, s in transfer.items()}
    n = prompt_counts([s for s in transfer.values() if "skipped" not in s])
    header = ["held-out dataset", "trained on", f"best of {n['train']} (seed 0)", f"best of {n['train']}, mean ± sd",
              "best single on the training datasets",
              f"best of {n['train']} minus it, 95% CI", f"best of {n['all']}, mean ± sd",
              f"best of {n['all']} minus best single ({n['all']}), 95% CI",
              "held-out questions found in the training datasets", "training rows dropped"]
    rows = []
    for ds, s in transfer.items():
        if "skipped" in s:
            rows.append([ds, ", ".join(s.get("trained_on", [])), f"skipped: {s['skipped']}"] + ["-"] * 7)
            continue
        leak = s.get("cross_dataset_leakage", {})
        rows.append([
            ds, ", ".join(s["trained_on"]), _f(s["best_of_n"]),
            _mean_sd(s.get("best_of_n_seed_mean"), s.get("best_of_n_seed_std")), _f(s["best_single"]),
            _ci(s["best_of_n_diff_ci"]),
            _mean_sd(s.get("best_of_n_all_prompts_seed_mean"), s.get("best_of_n_all_prompts_seed_std")),
            _ci(s.get("best_of_n_all_prompts_diff_ci")),
            f"{leak.get('in_training_datasets', '-')} of {leak.get('heldout_questions', '-')}",
            str(leak.get("dropped_rows", "-")),
        ])
    return _table(header, rows)


def crossfit_table(crossfit: dict) -> str:
    from oirl_fast.reranking.report import crossfit_rows

    header, rows = crossfit_rows(crossfit)
    return _table(header, rows)


def side_by_side(named: list[tuple[str, dict]]) -> str:
    cells = [c for c, _ in _cells(named[0][1])]
    n = prompt_counts([s for _, summary in named for _, s in _cells(summary)])
    header = ["cell"] + [f"{part}, {name}" for name, _ in named
                         for part in (f"best of {n['train']}, mean ± sd", f"best of {n['train']} minus best single, 95% CI",
                                      f"best of {n['all']}, mean ± sd", "AUC")]
    rows = []
    for cell in cells:
        row = [cell]
        for _, summary in named:
            s = dict(_cells(summary)).get(cell)
            row += ["-"] * 4 if s is None else [
                _mean_sd(s.get("best_of_n_seed_mean"), s.get("best_of_n_seed_std")), _ci(s["best_of_n_diff_ci"]),
                _mean_sd(s.get("best_of_n_all_prompts_seed_mean"), s.get("best_of_n_all_prompts_seed_std")),
                _f(s["auc"])]
        rows.append(row)
    return _table(header, rows)


def _diff(x) -> str:
    return "-" if x is None else f"{x['diff']:+.3f} [{x['ci95'][0]:+.3f}, {x['ci95'][1]:+.3f}]"


def tradeoff_table(result: dict) -> str:
    header = ["policy", "LLM calls per query", "accuracy (mean ± sd over seeds)", "minus best single, 95% CI",
              "minus fixed vote (best on train), same calls, 95% CI", "minus fixed vote (model's mean score), 95% CI",
              "Pareto front"]
    rows = []
    for p in result["points"]:
        refs = []
        for kind in ("best_on_train", "model_mean"):
            x = p["vs_fixed_vote"].get(kind)
            refs.append("-" if x is None else f"{_diff(x)} (k={x['calls']})")
        rows.append([p["policy"], f"{p['calls_per_query']:.2f}", _mean_sd(p["accuracy"], p.get("accuracy_sd")),
                     _diff(p["vs_best_single"]), *refs, "yes" if p["policy"] in result["pareto_front"] else ""])
    return (f"{result['n_queries']} queries, {result['seeds']} seeds, fixed sets: "
            f"{json.dumps(result['fixed_sets'])}\n\n" + _table(header, rows))


def readme_table(summary: dict) -> str:
    """The README's one table: per dataset, the grouped split's figures and the cross-fitted policy's."""
    names = [ds for ds in summary if ds not in SECTIONS and "grouped" in summary[ds]]
    grouped = {ds: upgrade(summary[ds]["grouped"]) for ds in names}
    n = prompt_counts(list(grouped.values()))["train"]
    seeds = "/".join(sorted({str(s.get("seeds")) for s in grouped.values()}))
    rows = [
        ["test questions (grouped split)"] + [str(grouped[ds]["n_test_queries"]) for ds in names],
        ["best single prompt (chosen on train)"] + [_f(grouped[ds]["best_single"]) for ds in names],
        [f"reward model, best of {n}, mean ± sd over {seeds} seeds"]
        + [_mean_sd(grouped[ds].get("best_of_n_seed_mean"), grouped[ds].get("best_of_n_seed_std")) for ds in names],
        [f"best of {n} minus best single, 95% CI in accuracy (seed 0)"] + [_ci(grouped[ds]["best_of_n_diff_ci"]) for ds in names],
        [f"oracle ({n})"] + [_f(grouped[ds]["oracle"]) for ds in names],
    ]
    crossfit = summary.get("crossfit") or {}
    if crossfit:
        from oirl_fast.reranking.report import crossfit_rows

        _, cf_rows = crossfit_rows({ds: crossfit[ds] for ds in names if ds in crossfit})
        wanted = {f"questions (best of {n})": "cross-fitted: questions, each picked by a model that never saw it",
                  f"rerank: default policy (near-duplicate vote), best of {n}":
                      "cross-fitted `oirl rerank` policy (near-duplicate vote): accuracy (gain in points, 95% CI)"}
        present = [ds for ds in names if ds in crossfit]
        for row in cf_rows:
            if row[0] in wanted:
                by_ds = dict(zip(present, row[1:]))
                rows.append([wanted[row[0]]] + [by_ds.get(ds, "-") for ds in names])
    return _table([""] + names, rows)


GENERATED = "<!-- generated by benchmarks/results_tables.py --pages from {source}; do not edit -->\n\n"


def write_pages(summary: dict, out_dir: Path, source: str) -> list[Path]:
    """Write the tables of one `oirl demo --json` summary as Markdown fragments under ``out_dir``:
    ``main.md``, ``transfer.md`` and ``crossfit.md`` (when the summary has those sections) and ``readme.md``.
    The docs pages include them; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pages = {"main.md": main_table(summary), "readme.md": readme_table(summary)}
    if "transfer" in summary:
        pages["transfer.md"] = transfer_table(summary["transfer"])
    if "crossfit" in summary:
        pages["crossfit.md"] = crossfit_table(summary["crossfit"])
    written = []
    for name, table in pages.items():
        path = out_dir / name
        path.write_text(GENERATED.format(source=source) + table + "\n", encoding="utf-8")
        written.append(path)
    return written


def update_readme(readme: Path, table: str) -> None:
    """Put ``table`` between the README's ``<!-- results-table: ... -->`` and ``<!-- /results-table -->`` lines."""
    import re

    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(r"(<!-- results-table:.*?-->\n).*?(<!-- /results-table -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"{readme}: no <!-- results-table: ... --> ... <!-- /results-table --> block")
    readme.write_text(pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text, count=1), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("summaries", nargs="+", help="summary.json of `oirl demo`, optionally as NAME=PATH")
    ap.add_argument("--pages", type=Path, metavar="DIR",
                    help="write the first summary's tables as Markdown fragments for the docs into DIR")
    ap.add_argument("--readme", type=Path, metavar="README",
                    help="with --pages: also put the short table into README's results-table block")
    args = ap.parse_args()
    if args.pages:
        summary = json.loads(Path(args.summaries[0]).read_text(encoding="utf-8"))
        for path in write_pages(summary, args.pages, args.summaries[0]):
            print(path)
        if args.readme:
            update_readme(args.readme, readme_table(summary))
            print(args.readme)
        return
    named = []
    for item in args.summaries:
        name, _, path = item.rpartition("=")
        named.append((name or Path(path).parent.name, json.loads(Path(path).read_text(encoding="utf-8"))))
    first = named[0][1]
    if "settings" in first and "datasets" in first:  # oirl rerank --report-json: one cross-fitting table
        from oirl_fast.reranking.report import summary

        figures = {}
        for _, report in named:
            for ds, row in summary(report).items():
                figures[ds] = {**row, "seconds": report["settings"].get("seconds")}
        print(crossfit_table(figures))
        return
    if "points" in first:  # oirl tradeoff --json
        print(tradeoff_table(first))
        return
    print(main_table(first))
    if "transfer" in first:
        print("\nTransfer (leave-one-dataset-out):\n")
        print(transfer_table(first["transfer"]))
    if "crossfit" in first:
        print("\nCross-fitted re-ranking (grouped 5-fold, every question tested once):\n")
        print(crossfit_table(first["crossfit"]))
    if len(named) > 1:
        print("\nSide by side:\n")
        print(side_by_side(named))


if __name__ == "__main__":
    main()
