"""``oirl demo``: the whole offline pipeline on the bundled data, one dataset and protocol at a time."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.text import Text

from .collect import DATASETS
from .collect.published import import_published
from .errors import OirlError
from .evaluation import evaluate, summary
from .gain_plot import plot_gains
from .multilog import distinct_texts
from .report import plot_reliability, plot_summary, print_summary, summary_line, summary_table, write_json
from .schema import write_logs
from .splits import Protocol, holdout_mask
from .train.fit import fit_reward_model, trainable_split, write_artifact
from .train.reward_model import TrainConfig
from .transfer import run_transfer


def model_dir(out: Path, dataset: str, protocol: str) -> Path:
    """grouped (the honest protocol) gets the plain ``model/`` that `oirl score` users pick up."""
    return out / dataset / ("model" if protocol == "grouped" else f"model-{protocol}")


@dataclass(frozen=True)
class DemoPlan:
    """What ``oirl demo`` runs: ``datasets`` and ``protocols`` (every pair), the ``backend`` (lightgbm or
    xgboost) and whether its native library is compiled (``compile_library``), ``seeds`` models per split
    (seed 0 saved, the others for the spread), the leave-one-dataset-out ``transfer``, the
    cross-fitted re-rank ``crossfit`` and ``tradeoff``, the answer policies simulated on the logged GSM8K
    answers (when GSM8K runs under the grouped protocol)."""

    datasets: tuple[str, ...] = tuple(DATASETS)
    protocols: tuple[str, ...] = ("published", "grouped")
    backend: str = "lightgbm"
    compile_library: bool = True
    seeds: int = 5
    transfer: bool = True
    crossfit: bool = True
    tradeoff: bool = True


def run_demo(out, plan: DemoPlan, source, embedder, console: Console) -> dict:
    """Per dataset and protocol of ``plan``, the summary of :func:`oirl_fast.evaluation.summary`; with
    ``plan.transfer`` and two datasets or more, also ``transfer``: the leave-one-dataset-out report of
    :func:`oirl_fast.transfer.run_transfer` per dataset (models and reports in ``out/transfer/``); with
    ``plan.crossfit``, also ``crossfit``: per dataset, the figures of :func:`run_crossfit`; with
    ``plan.tradeoff``, GSM8K and the grouped protocol, also ``tradeoff``: :func:`run_demo_tradeoff`.
    ``source``: the data folder (None: the bundled copy)."""
    out = Path(out)
    datasets, protocols, backend, compile_library = plan.datasets, plan.protocols, plan.backend, plan.compile_library
    seeds, transfer, crossfit = plan.seeds, plan.transfer, plan.crossfit
    for ds in datasets:
        if ds not in DATASETS:
            raise OirlError(f"unknown dataset {ds!r}; use one of {', '.join(DATASETS)}")
    for p in protocols:
        Protocol(p)
    if seeds < 1:
        raise OirlError(f"--seeds must be at least 1, got {seeds}")
    summaries: dict[str, dict[str, dict]] = {}
    tables = {}
    t_start = time.perf_counter()
    for ds in datasets:
        console.rule(Text(ds, style="bold"))
        t0 = time.perf_counter()
        table = import_published(ds, source, progress=True)
        write_logs(table, out / ds / "logs.parquet")
        tables[ds] = table
        console.print(f"import: {table.num_rows} records ({time.perf_counter() - t0:.1f}s)")
        t0 = time.perf_counter()
        texts = distinct_texts(table)
        embedder.embed(texts)
        console.print(f"embed ({embedder.encoder.kind}): {len(texts)} distinct texts, {embedder.last_new} new "
                      f"({time.perf_counter() - t0:.1f}s)")
        fitted = {}
        for proto in protocols:
            t0 = time.perf_counter()
            console.print(f"train [{proto}] {backend}" + (" + compile" if compile_library else ""))
            protocol = Protocol(proto)
            # GSM8K has no repeated questions, so its grouped split is the published one:
            # fit once per distinct split, write one artifact per protocol.
            split_key = hashlib.sha256(holdout_mask(table, protocol).tobytes()).hexdigest()
            if split_key not in fitted:
                split = trainable_split(table, protocol)
                first = fit_reward_model(table, protocol, TrainConfig(backend=backend), embedder, console.print,
                                         split=split)
                # Seeds 1.. only measure run-to-run spread; the artifact is seed 0's model.
                others = [
                    fit_reward_model(table, protocol, TrainConfig(backend=backend, seed=s), embedder, lambda *_: None,
                                     split=split).model
                    for s in range(1, seeds)
                ]
                if others:
                    console.print(f"  + {len(others)} more seeds for the spread")
                fitted[split_key] = (first, others)
            else:
                console.print("  same train/test split as an earlier protocol: reusing its fitted models")
            first, others = fitted[split_key]
            artifact = write_artifact(first, model_dir(out, ds, proto), compile_library, protocol)
            console.print(f"  artifact {artifact.path} ({time.perf_counter() - t0:.1f}s)")
            t0 = time.perf_counter()
            rep = evaluate(artifact, table, embedder, seed_models=others)
            write_json(rep, out / ds / f"report-{proto}.json")
            plot_reliability(rep, out / ds / f"reliability-{proto}.png")
            summaries.setdefault(ds, {})[proto] = summary(rep)
            console.print(f"evaluate [{proto}]: {summary_line(summaries[ds][proto])} ({time.perf_counter() - t0:.1f}s)")
    per_dataset = dict(summaries)
    if crossfit:
        console.rule(Text("cross-fitted re-ranking: every question picked by a model that never saw it", style="bold"))
        summaries["crossfit"] = {ds: run_crossfit(table, embedder, out / "crossfit" / ds, console)
                                 for ds, table in tables.items()}
    if plan.tradeoff and TRADEOFF_DATASET in tables and "grouped" in protocols:
        console.rule(Text("answers: votes and cascades simulated on the logged GSM8K answers", style="bold"))
        summaries["tradeoff"] = {TRADEOFF_DATASET: run_demo_tradeoff(out, source, embedder, console)}
    if transfer and len(tables) >= 2:
        console.rule(Text("transfer: leave-one-dataset-out", style="bold"))
        t0 = time.perf_counter()
        summaries["transfer"] = run_transfer(tables, embedder, out / "transfer", backend, seeds, compile_library,
                                             console.print)
        console.print(f"transfer: {time.perf_counter() - t0:.1f}s")
    elif transfer:
        console.print("transfer: needs two datasets at least (--dataset), skipped")
    write_json(summaries, out / "summary.json")
    plot_summary(per_dataset, out / "summary.png")
    plot_gains(summaries, out / "gains.png")
    print_summary(per_dataset, console)
    if "transfer" in summaries:
        console.print(summary_table({"held out": {k: v for k, v in summaries["transfer"].items() if "skipped" not in v}},
                                    title="Transfer: trained on the other datasets only (best single = best on them)"))
    if "crossfit" in summaries:
        from .reranking.report import crossfit_table

        console.print(crossfit_table(summaries["crossfit"]))
    console.print(f"reports in {out}/ (summary.json, summary.png, gains.png); total {time.perf_counter() - t_start:.0f}s")
    return summaries


CROSSFIT_FOLDS = 5
TRADEOFF_DATASET = "gsm8k"  # the one dataset whose answers (not only verdicts) are logged
TRADEOFF_POLICIES = ("reward model", "vote 3 (reward model)", "vote 5 (reward model)")


def run_demo_tradeoff(out: Path, source, embedder, console: Console) -> dict:
    """``oirl tradeoff`` with the demo's grouped GSM8K model on the logged answers of its 1,000 test questions
    (one seed): the full result in ``out/tradeoff/gsm8k.json``; returns the summary's figures, for each policy of
    :data:`TRADEOFF_POLICIES`: LLM calls per query, accuracy and its paired-bootstrap difference (``diff``, ``ci95``)
    to the query-independent policy of the same calls (the best single prompt, or the vote over the prompts best
    on the training rows), named in ``reference``."""
    from .report import write_json
    from .tradeoff import run_tradeoff
    from .tradeoff_answers import AnswerSource

    t0 = time.perf_counter()
    result = run_tradeoff(model_dir(out, TRADEOFF_DATASET, "grouped"), embedder, AnswerSource(TRADEOFF_DATASET, source))
    write_json(result, out / "tradeoff" / f"{TRADEOFF_DATASET}.json")
    points = {p["policy"]: p for p in result["points"]}
    figures = {"n_queries": result["n_queries"], "policies": {}}
    for name in TRADEOFF_POLICIES:
        p = points[name]
        ref = p["vs_fixed_vote"]["best_on_train"]
        figures["policies"][name] = {"calls_per_query": p["calls_per_query"], "accuracy": p["accuracy"],
                                     "reference": ref["reference"], "reference_accuracy": ref["accuracy"],
                                     "diff": ref["diff"], "ci95": ref["ci95"]}
        console.print(f"tradeoff [{TRADEOFF_DATASET}]: {name}, {p['calls_per_query']:.0f} calls, {p['accuracy']:.3f} "
                      f"against {ref['reference']} {ref['accuracy']:.3f} (95% CI of the difference "
                      f"[{100 * ref['ci95'][0]:+.1f}, {100 * ref['ci95'][1]:+.1f}] pts)")
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    return figures


def run_crossfit(table, embedder, out: Path, console: Console) -> dict:
    """``oirl rerank --fast`` on one dataset's log (5 folds, 2 inner folds, every candidate, seed 0; the default
    policy is the near-duplicate vote), with the embeddings already computed: picks.jsonl, report.json and report.png in ``out``; returns the dataset's
    figures of :func:`oirl_fast.reranking.report.summary` plus the seconds it took."""
    from .reranking.run import rerank
    from .reranking.report import plot_report, summary
    from .report import write_json

    t0, c0 = time.perf_counter(), time.process_time()
    result = rerank(table, folds=CROSSFIT_FOLDS, fast=True, embedder=embedder, progress=True)
    result.write_picks(out / "picks.jsonl")
    write_json(result.report, out / "report.json")
    plot_report(result.report, out / "report.png")
    (ds, figures), = summary(result.report).items()
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    figures["cpu_seconds"] = round(time.process_time() - c0, 1)  # wall time on a shared machine overstates it
    ci = figures["rerank_diff_ci"]
    share = (figures.get("ceiling") or {}).get("captured_share")
    console.print(f"crossfit [{ds}]: {figures['n_questions']} questions, rerank {figures['rerank']:.3f} vs best single "
                  f"{figures['best_single']:.3f} (95% CI of the gain [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}] pts, "
                  f"{figures['switched_share']:.0%} switched"
                  + ("" if share is None else f", {share:.0%} of the repeat-based headroom")
                  + f") ({figures['seconds']:.1f}s)")
    return figures


QUICK_DATASET = "svamp"  # its cross-fitted re-rank gains significantly (README), and it runs in about a minute
QUICK_QUERIES = 200


def run_quick(out, source, embedder, console: Console, dataset: str = QUICK_DATASET, backend: str = "lightgbm",
              compile_library: bool = True) -> dict:
    """``oirl demo --quick``: one dataset end to end, in minutes: import, embed, train (grouped protocol,
    one seed) and compile, evaluate, the cross-fitted re-rank, ``oirl score`` on a file of held-out
    questions, and the forest plot of the gains. Returns the summary (the sections of
    :func:`run_demo`'s for this dataset: ``{dataset: {"grouped": ...}, "crossfit": {dataset: ...}}``)
    and prints where each output is."""
    out = Path(out)
    if dataset not in DATASETS:
        raise OirlError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)}")
    t_start = time.perf_counter()
    console.rule(Text(f"quick demo: {dataset}", style="bold"))
    table = import_published(dataset, source, progress=True)
    write_logs(table, out / dataset / "logs.parquet")
    texts = distinct_texts(table)
    embedder.embed(texts)
    console.print(f"import and embed: {table.num_rows} records, {len(texts)} distinct texts "
                  f"({time.perf_counter() - t_start:.1f}s)")
    t0 = time.perf_counter()
    protocol = Protocol("grouped")
    fitted = fit_reward_model(table, protocol, TrainConfig(backend=backend), embedder, console.print)
    artifact = write_artifact(fitted, model_dir(out, dataset, "grouped"), compile_library, protocol)
    console.print(f"train{' + compile' if compile_library else ''}: {artifact.path} ({time.perf_counter() - t0:.1f}s)")
    t0 = time.perf_counter()
    rep = evaluate(artifact, table, embedder)
    write_json(rep, out / dataset / "report-grouped.json")
    summaries = {dataset: {"grouped": summary(rep)}}
    console.print(f"evaluate [grouped]: {summary_line(summaries[dataset]['grouped'])} ({time.perf_counter() - t0:.1f}s)")
    summaries["crossfit"] = {dataset: run_crossfit(table, embedder, out / "crossfit" / dataset, console)}
    queries, picks = out / dataset / "queries.jsonl", out / dataset / "picks.jsonl"
    score_seconds = score_held_out(table, protocol, artifact.path, queries, picks, console)
    write_json(summaries, out / "summary.json")
    plot_gains(summaries, out / "gains.png", title=f"{dataset}: gain over the best single prompt (95% CI)")
    from .reranking.report import crossfit_table

    console.print(crossfit_table(summaries["crossfit"]))
    console.rule(Text("outputs", style="bold"))
    for what, where in [("log (oirl format)", out / dataset / "logs.parquet"),
                        ("reward model (oirl score MODEL)", artifact.path),
                        ("held-out evaluation", out / dataset / "report-grouped.json"),
                        ("cross-fitted picks and report", out / "crossfit" / dataset),
                        ("queries scored", queries), (f"their picks ({score_seconds:.1f}s)", picks),
                        ("gains over the best single prompt (forest plot)", out / "gains.png"),
                        ("summary", out / "summary.json")]:
        console.print(f"  {what}: {where}", highlight=False, soft_wrap=True)  # whole paths, to copy
    console.print(f"quick demo: {time.perf_counter() - t_start:.0f}s; the full study: make study (oirl demo)")
    return summaries


def score_held_out(table, protocol, model, queries: Path, picks: Path, console: Console) -> float:
    """Write the first :data:`QUICK_QUERIES` held-out questions of ``protocol`` as ``{"id", "query"}``
    lines and run ``oirl score`` on them in a child process, as a user would; returns its seconds."""
    import json
    import subprocess
    import sys

    from .atomic import write_text

    test = table.filter(holdout_mask(table, protocol))
    first = {}
    for qid, q in zip(test.column("query_id").to_pylist(), test.column("query").to_pylist()):
        first.setdefault(str(qid), q)
        if len(first) == QUICK_QUERIES:
            break
    write_text(queries, "".join(json.dumps({"id": i, "query": q}, ensure_ascii=False) + "\n" for i, q in first.items()))
    cmd = ["score", str(model), "--in", str(queries), "--out", str(picks)]
    console.print(f"$ oirl {' '.join(cmd)}", highlight=False, soft_wrap=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", "from oirl_fast.cli import main; main()", *cmd],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise OirlError(f"oirl score failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    console.print(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "", highlight=False)
    return time.perf_counter() - t0
