"""The cross-fitted report: per dataset and prompt set, every selector's accuracy against the best fixed prompt.

:func:`build_report` turns the seeds' :class:`~oirl_fast.reranking.crossfit.SeedResult` into a JSON-ready
dict; :func:`report_table` renders it for the terminal (rich), :func:`plot_report` as a PNG.
Accuracies are over the units logged with every prompt of the set; with several seeds each figure is
the seed mean (``*_sd`` the spread) and the CIs are paired bootstraps over the per-question seed means.
``rerank`` is the default policy (the near-duplicate vote, :mod:`.neighbours`), ``model_margin`` the
model-based abstention, ``default_model`` the inner-chosen model without abstention; the ceiling's
``captured_share`` is the share of the repeat-based headroom the default policy captures (with several seeds
the mean of the seeds' shares, listed in ``captured_share_per_seed``; the other ceiling figures are seed 0's).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rich.table import Table

from ..extras import require
from .. import metrics
from ..evaluation import known_question_headroom
from ..splits import pool
from .crossfit import SeedResult
from .folds import Units
from .selection import coverage_curve, taken

SET_LABELS = {"train": "n_train_prompts", "all": "n_all_prompts"}
BASELINES = ("best_single", "random", "oracle")


def _values(units: Units, res, names) -> dict[str, np.ndarray]:
    """{selector: float (U,) logged outcome of its pick} over one prompt set of one seed."""
    outcome = units.rate[:, res.cols]
    with np.errstate(invalid="ignore"):
        out = {"rerank": taken(outcome, res.pick), "default_model": taken(outcome, res.order[:, 0]),
               "model_margin": taken(outcome, res.margin_pick)}
        out.update({c: taken(outcome, res.candidate_pick[c]) for c in names})
        out["best_single"] = taken(outcome, res.fixed)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out["random"] = np.nanmean(outcome, axis=1)
            out["oracle"] = np.nanmax(outcome, axis=1)
    return out


def _ceiling(table: pa.Table, units: Units, res, folds: np.ndarray, dataset: str) -> dict | None:
    """The repeat-based ceiling of :func:`oirl_fast.evaluation.known_question_headroom`, fold by fold (each fold's
    best fixed prompt and prior from its own training side), pooled over folds weighted by questions scored."""
    ids = [units.prompt_ids[c] for c in res.cols]
    rows_ds = table.filter(pc.equal(table.column("dataset"), dataset))
    totals = {"ceiling": 0.0, "best_single": 0.0, "reward_model": 0.0, "n": 0}
    for k in np.unique(folds):
        in_fold = (folds == k) & (units.datasets == dataset)
        if not in_fold.any():
            continue
        rows = rows_ds.filter(pc.is_in(rows_ds.column("group"), pa.array(list(units.groups[in_fold]), pa.string())))
        test = pool(rows, "group", ids)
        train = (folds != k) & (units.datasets == dataset)
        with np.errstate(invalid="ignore", divide="ignore"):
            prior = np.nansum(np.nan_to_num(units.rate[train][:, res.cols]) * units.count[train][:, res.cols], axis=0) \
                / np.maximum(units.count[train][:, res.cols].sum(axis=0), 1)
        # the policy's pick as a one-hot score, so "reward_model" below is the default policy
        where = {g: i for i, g in enumerate(units.groups[in_fold])}
        picks = res.pick[in_fold]
        scores = np.zeros((test.n_units, len(ids)))
        for i, g in enumerate(test.groups):
            scores[i, picks[where[g]]] = 1.0
        h = known_question_headroom(rows, ids, prior, scores, test, "group")
        if not h.get("available"):
            return None
        for key in ("ceiling", "best_single", "reward_model"):
            totals[key] += h[key] * h["n_questions"]
        totals["n"] += h["n_questions"]
    if not totals["n"]:
        return None
    out = {key: totals[key] / totals["n"] for key in ("ceiling", "best_single", "reward_model")}
    gap = out["ceiling"] - out["best_single"]
    return {"n_questions": totals["n"], "ceiling": out["ceiling"], "best_single_half_b": out["best_single"],
            "rerank_half_b": out["reward_model"], "captured_share": (out["reward_model"] - out["best_single"]) / gap
            if gap > 0 else None}


def build_report(table: pa.Table, units: Units, seeds: list[SeedResult], names: tuple[str, ...], settings: dict) -> dict:
    """{"settings", "datasets": {dataset: {set label: figures}}}; see the module docstring."""
    first = seeds[0]
    out = {"settings": settings, "datasets": {}}
    for ds in dict.fromkeys(units.datasets.tolist()):
        per_ds = {}
        for set_name, res0 in first.sets.items():
            mask = (units.datasets == ds) & res0.scored
            if not mask.any():
                continue
            per_seed = [_values(units, s.sets[set_name], names) for s in seeds]
            selectors = list(per_seed[0])
            acc = {c: [float(v[c][mask].mean()) for v in per_seed] for c in selectors}
            unit_mean = {c: np.mean([v[c][mask] for v in per_seed], axis=0) for c in selectors}
            fig = {
                "n_questions": int(mask.sum()),
                "n_prompts": int(len(res0.cols)),
                "accuracy": {c: float(np.mean(a)) for c, a in acc.items()},
                "accuracy_sd": {c: float(np.std(a, ddof=1)) if len(a) > 1 else None for c, a in acc.items()},
                "per_seed": acc,
                "diff_to_best_single": {c: float(np.mean(acc[c]) - np.mean(acc["best_single"])) for c in selectors},
                "diff_to_best_single_ci95": {
                    c: list(metrics.paired_bootstrap_ci(unit_mean[c], unit_mean["best_single"]))
                    for c in selectors if c != "best_single"},
                "switched_share": float(np.mean([s.sets[set_name].switched[mask].mean() for s in seeds])),
                "policy": "near-duplicate vote",
                "near_share": float(np.mean([s.sets[set_name].near[mask].mean() for s in seeds])),
                "model_margin_switched_share": float(np.mean([
                    (s.sets[set_name].margin_pick != s.sets[set_name].fixed)[mask].mean() for s in seeds])),
                "votes": [dict(v) for v in res0.votes if v["dataset"] == ds],
                "default_models": _counts([row["model"] for s in seeds for row in s.sets[set_name].chosen]),
                "margins": [{k: v for k, v in m.items()} for m in res0.margins if m["dataset"] == ds],
                "coverage_curve": _mean_curves([_curve(units, s.sets[set_name], mask) for s in seeds]),
            }
            if set_name == "train":
                fig["ceiling"] = _ceiling(table, units, res0, first.folds, ds)
                if fig["ceiling"] and len(seeds) > 1:  # the share each seed's policy captures, and their mean
                    shares = [fig["ceiling"]["captured_share"]] + [
                        (_ceiling(table, units, s.sets[set_name], s.folds, ds) or {}).get("captured_share")
                        for s in seeds[1:]]
                    fig["ceiling"]["captured_share_per_seed"] = shares
                    if all(x is not None for x in shares):
                        fig["ceiling"]["captured_share"] = float(np.mean(shares))
            per_ds[SET_LABELS[set_name]] = fig
        out["datasets"][str(ds)] = per_ds
    return out


def _counts(items) -> dict:
    out: dict = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


def _curve(units: Units, res, mask) -> list[dict]:
    outcome = units.rate[:, res.cols][mask]
    return coverage_curve(res.gain_rank[mask], res.gain[mask], taken(outcome, res.order[mask, 0]),
                          taken(outcome, res.fixed[mask]))


def _mean_curves(curves: list[list[dict]]) -> list[dict]:
    return [{key: float(np.mean([c[i][key] for c in curves])) for key in curves[0][i]} for i in range(len(curves[0]))]


def summary(report: dict) -> dict[str, dict]:
    """{dataset: flat figures} for ``oirl demo --json``'s ``crossfit`` section and the docs' results table."""
    out = {}
    for ds, sets in report["datasets"].items():
        row = {}
        for label, fig in sets.items():
            suffix = "" if label == "n_train_prompts" else "_all_prompts"
            a, ci = fig["accuracy"], fig["diff_to_best_single_ci95"]
            row.update({
                f"n_prompts{suffix}": fig["n_prompts"], f"n_questions{suffix}": fig["n_questions"],
                f"best_single{suffix}": a["best_single"], f"rerank{suffix}": a["rerank"],
                f"rerank_diff_ci{suffix}": ci["rerank"], f"switched_share{suffix}": fig["switched_share"],
                f"near_share{suffix}": fig.get("near_share"),
                f"default_model{suffix}": a["default_model"], f"default_model_diff_ci{suffix}": ci["default_model"],
                f"model_margin{suffix}": a["model_margin"], f"model_margin_diff_ci{suffix}": ci["model_margin"],
                f"random{suffix}": a["random"], f"oracle{suffix}": a["oracle"],
                f"candidates{suffix}": {c: {"accuracy": a[c], "diff_ci": ci[c]}
                                        for c in a if c not in ("rerank", "default_model", "model_margin", *BASELINES)},
                f"default_models{suffix}": fig["default_models"],
            })
            if "ceiling" in fig:
                row["ceiling"] = fig["ceiling"]
        row["seeds"] = len(next(iter(sets.values()))["per_seed"]["rerank"])
        out[ds] = row
    return out


def _pts(x: float) -> str:
    return f"{100 * x:+.2f}"


def report_table(report: dict) -> Table:
    """One row per (dataset, prompt set, selector): accuracy, ± seed spread, gain over the best fixed prompt
    in points with its 95% CI."""
    t = Table(title="Cross-fitted re-ranking: every question picked by a model that never saw it")
    for col in ("dataset", "prompts", "selector", "accuracy", "vs best single (pts, 95% CI)"):
        t.add_column(col, justify="right" if col not in ("dataset", "selector") else "left")
    for ds, sets in report["datasets"].items():
        for label, fig in sets.items():
            a, sd, ci = fig["accuracy"], fig["accuracy_sd"], fig["diff_to_best_single_ci95"]
            for c in a:
                acc = f"{a[c]:.3f}" + (f" ± {sd[c]:.3f}" if sd[c] is not None else "")
                diff = "" if c == "best_single" else \
                    f"{_pts(fig['diff_to_best_single'][c])} [{_pts(ci[c][0])}, {_pts(ci[c][1])}]"
                name = c if c != "rerank" else f"rerank (policy, {fig['switched_share']:.0%} switched)"
                t.add_row(ds, f"{fig['n_prompts']} × {fig['n_questions']}", name, acc, diff)
            ceil = fig.get("ceiling")
            if ceil:
                share = "-" if ceil["captured_share"] is None else f"{ceil['captured_share']:.0%} captured"
                t.add_row(ds, f"{fig['n_prompts']} × {ceil['n_questions']}", "repeat-based ceiling (half B)",
                          f"{ceil['ceiling']:.3f}", f"best single {ceil['best_single_half_b']:.3f}; {share}")
    return t


def plot_report(report: dict, path: str | Path) -> Path:
    """PNG: per dataset, every selector's gain over the best fixed prompt with its CI (best of N train prompts
    and of all prompts), and the coverage-gain curve of the default model."""
    matplotlib = require("matplotlib", "drawing the figures")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import atomic_path

    names = list(report["datasets"])
    fig, axes = plt.subplots(2, len(names), figsize=(5 * len(names), 8), squeeze=False)
    for i, ds in enumerate(names):
        ax = axes[0][i]
        for j, (label, f) in enumerate(report["datasets"][ds].items()):
            sel = [c for c in f["diff_to_best_single_ci95"] if c not in ("oracle", "random")]
            y = np.arange(len(sel)) + 0.35 * j
            d = np.array([100 * f["diff_to_best_single"][c] for c in sel])
            lo = np.array([100 * f["diff_to_best_single_ci95"][c][0] for c in sel])
            hi = np.array([100 * f["diff_to_best_single_ci95"][c][1] for c in sel])
            ax.errorbar(d, y, xerr=[d - lo, hi - d], fmt="o", capsize=3, label=f"best of {f['n_prompts']}")
            ax.set_yticks(np.arange(len(sel)) + 0.17, ["policy (abstains)" if c == "rerank" else c for c in sel])
        ax.axvline(0, color="grey", lw=1)
        ax.set_title(f"{ds}: gain over best single (points)")
        ax.legend(fontsize=8)
        ax = axes[1][i]
        for label, f in report["datasets"][ds].items():
            cv = f["coverage_curve"]
            ax.plot([c["switched"] for c in cv], [100 * c["gain"] for c in cv], "o-", label=f"best of {f['n_prompts']}")
        ax.axhline(0, color="grey", lw=1)
        ax.set_xlabel("share of questions switched")
        ax.set_ylabel("gain (points)")
        ax.set_title(f"{ds}: coverage-gain (default model)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)


def _gain(acc: float, base: float, ci) -> str:
    return f"{acc:.3f} ({_pts(acc - base)} [{_pts(ci[0])}, {_pts(ci[1])}])"


def crossfit_rows(figures: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the per-dataset cross-fitting figures (``summary`` per dataset, as ``oirl demo --json``
    holds them under ``crossfit``): accuracy and gain over the best single prompt in points with the 95% CI."""
    names = list(figures)
    rows = []
    for suffix, n_key in (("", "n_prompts"), ("_all_prompts", "n_prompts_all_prompts")):
        present = [ds for ds in names if figures[ds].get(f"rerank{suffix}") is not None]
        if not present:
            continue
        n = "/".join(sorted({str(figures[ds][n_key]) for ds in present}))

        def cell(ds, fn):
            f = figures[ds]
            return fn(f) if f.get(f"rerank{suffix}") is not None else "-"

        base = lambda f: f[f"best_single{suffix}"]
        rows.append([f"questions (best of {n})"] + [cell(ds, lambda f: f"{f[f'n_questions{suffix}']:,}") for ds in names])
        def near(f):
            share = f.get(f"near_share{suffix}")
            return "" if share is None else f" ({share:.0%} with a near-duplicate)"

        rows.append([f"rerank: default policy (near-duplicate vote), best of {n}"] + [cell(ds, lambda f: _gain(
            f[f"rerank{suffix}"], base(f), f[f"rerank_diff_ci{suffix}"]) + f", {f[f'switched_share{suffix}']:.0%} switched"
            + near(f)) for ds in names])
        rows.append([f"default model (chosen on inner folds), best of {n}"] + [cell(ds, lambda f: _gain(
            f[f"default_model{suffix}"], base(f), f[f"default_model_diff_ci{suffix}"])) for ds in names])
        rows.append([f"model-margin abstention (the earlier default policy), best of {n}"] + [cell(ds, lambda f: _gain(
            f[f"model_margin{suffix}"], base(f), f[f"model_margin_diff_ci{suffix}"])
            if f.get(f"model_margin{suffix}") is not None else "-") for ds in names])
        cands = list(dict.fromkeys(c for ds in present for c in figures[ds][f"candidates{suffix}"]))
        for c in cands:
            rows.append([f"{c}, best of {n}"] + [cell(ds, lambda f: _gain(
                f[f"candidates{suffix}"][c]["accuracy"], base(f), f[f"candidates{suffix}"][c]["diff_ci"])
                if c in f[f"candidates{suffix}"] else "-") for ds in names])
        rows.append([f"best single prompt (chosen on each training side), {n}"]
                    + [cell(ds, lambda f: f"{base(f):.3f}") for ds in names])
        rows.append([f"random / oracle, {n}"] + [cell(ds, lambda f: f"{f[f'random{suffix}']:.3f} / "
                                                              f"{f[f'oracle{suffix}']:.3f}") for ds in names])
        rows.append([f"default model per fold, {n}"] + [cell(ds, lambda f: ", ".join(
            f"{m} ×{k}" for m, k in f[f"default_models{suffix}"].items())) for ds in names])
    def ceiling(f):
        c = f.get("ceiling")
        if not c:
            return "- (no repeats)"
        share = "-" if c["captured_share"] is None else f"{c['captured_share']:.0%}"
        return f"{c['best_single_half_b']:.3f} → {c['ceiling']:.3f} ({share} captured)"
    rows.append(["repeat-based ceiling: best single → ceiling (share the policy captures)"]
                + [ceiling(figures[ds]) for ds in names])
    rows.append(["seeds; seconds of cross-fitting"] + [f"{figures[ds].get('seeds', 1)}; {figures[ds].get('seconds', '-')}"
                                                       for ds in names])
    return [""] + names, rows


def crossfit_table(figures: dict[str, dict]) -> Table:
    """The terminal form of :func:`crossfit_rows`."""
    header, rows = crossfit_rows(figures)
    t = Table(title="Cross-fitted re-ranking (every question tested once): accuracy (gain over best single in "
                    "points, 95% CI)")
    for h in header:
        t.add_column(h)
    for r in rows:
        t.add_row(*r)
    return t
