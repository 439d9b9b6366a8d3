"""The ``oirl`` command line: a thin layer over the library.

Every user-fixable problem (missing file, malformed input, mismatched model) is an
OirlError, printed as one line on stderr with exit code 2.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from . import cli_answer, cli_collect, cli_rerank, cli_score
from .cli_common import (CacheOpt, DATASETS, DeviceOpt, EmbedderOpt, SchedulerOpt, WorkersOpt, app, cli_errors, err,
                         make_embedder)
from .errors import OirlError
from .extras import check_extras
from .paths import JSON_SUFFIXES, LOG_SUFFIXES, PNG_SUFFIXES, Output, check_paths


def _say(message: str) -> None:
    """One progress line on stderr, printed as it is (no rich highlighting of paths and numbers)."""
    err.print(message, highlight=False)


@app.command("import")
@cli_errors
def import_cmd(
    dataset: str = typer.Argument(..., help="gsm8k, svamp or mawps."),
    out: Path = typer.Option(..., "--out", "-o", help="Log file to write: .parquet, or .jsonl for JSON lines."),
    source: Optional[Path] = typer.Option(
        None, help="Folder laid out like shared/data (plain or .gz files) \\[default: the copy bundled with oirl-fast]."
    ),
    answers: bool = typer.Option(
        False, "--answers",
        help="gsm8k: keep the LLM's published answer texts (column response, test rows), e.g. for "
             "oirl answer --backend replay:LOG.",
    ),
):
    """Import the published Prompt-OIRL LLaMA-2 logs of one dataset into the oirl log format.

    Counts are checked against the published ones (GSM8K 7473+1000, SVAMP 19690,
    MAWPS 7685 queries); a truncated or misnumbered file is an error naming it.
    """
    from .collect.published import import_published
    from .schema import write_logs

    if dataset not in DATASETS:
        raise OirlError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)}")
    check_paths({"--source": source}, [Output(out, "--out", LOG_SUFFIXES)])
    table = import_published(dataset, source, progress=True, answers=answers)
    write_logs(table, out)
    err.print(f"wrote {table.num_rows} records of {dataset} to {out}")


@app.command("convert")
@cli_errors
def convert_cmd(
    src: Path = typer.Argument(..., help="Log to read (.parquet or .jsonl)."),
    dst: Path = typer.Argument(..., help="Log to write (.parquet or .jsonl)."),
):
    """Convert a log between Parquet and JSON lines (validating it against the schema)."""
    from .schema import read_logs, write_logs

    check_paths({"SRC": src}, [Output(dst, "DST", LOG_SUFFIXES)])
    table = read_logs(src)
    write_logs(table, dst)
    err.print(f"wrote {table.num_rows} records to {dst}")


@app.command("embed")
@cli_errors
def embed_cmd(
    log: Path = typer.Argument(..., help="Log file (.parquet or .jsonl)."),
    cache_dir: Optional[Path] = CacheOpt,
    device: str = DeviceOpt,
    batch_size: int = typer.Option(128, help="Texts per forward pass."),
    embedder: str = EmbedderOpt,
):
    """Embed every distinct query and prompt of a log into the on-disk cache."""
    from .multilog import distinct_texts
    from .schema import read_logs

    texts = distinct_texts(read_logs(log))
    emb = make_embedder(cache_dir, device, batch_size, spec=embedder)
    t0 = time.perf_counter()
    emb.embed(texts)
    new = emb.last_new
    err.print(
        f"{len(texts)} distinct texts: {new} embedded in {time.perf_counter() - t0:.1f}s, "
        f"{len(texts) - new} from the cache at {emb.cache.dir}"
    )


@app.command("train")
@cli_errors
def train_cmd(
    logs: List[Path] = typer.Argument(
        ..., help="Log file(s) (.parquet or .jsonl), or folders of them. Several logs train one model: prompts are "
                  "matched by id and text, questions grouped by normalized text across all logs.",
        show_default=False,
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Model artifact folder to write (replaced atomically)."),
    protocol: str = typer.Option(
        "grouped", help="grouped (no question on both sides), published (the reference split) or "
                        "leave-one-dataset-out (test on --heldout-dataset, train on the other datasets minus every "
                        "question that also occurs in it)."),
    heldout_dataset: Optional[str] = typer.Option(
        None, "--heldout-dataset", help="leave-one-dataset-out: the dataset (value of the log's 'dataset' column) to test on."),
    backend: str = typer.Option("lightgbm", help="lightgbm or xgboost."),
    n_estimators: int = typer.Option(300, help="Boosting rounds at most, >= 1 (early stopping on a group-split validation set)."),
    learning_rate: float = typer.Option(0.05, help="Shrinkage per boosting round, in (0, 1]."),
    seed: int = typer.Option(0),
    test_fraction: float = typer.Option(0.25, help="grouped protocol: share of questions held out."),
    compile: bool = typer.Option(True, "--compile/--no-compile", help="Build the native library with treelite + tl2cgen."),
    fallback_margin: Optional[str] = typer.Option(
        None, "--fallback-margin",
        help="Store an abstention rule that `oirl score` and Model.pick apply: keep the prompt best on the training "
             "rows unless, with vote: the query has training near-duplicates on which another prompt won (the "
             "near-duplicate vote, `oirl rerank`'s default policy; its cosine, shrinkage and margin chosen by 5-fold "
             "cross-validation on the training side, no extra fit; writes neighbours.npz, the training questions' "
             "vectors and outcomes); auto: the pick's score beats it by more than a margin chosen by 3-fold "
             "cross-fitting on the training side (3 more fits); a number: that margin."),
    cache_dir: Optional[Path] = CacheOpt,
    device: str = DeviceOpt,
    embedder: str = EmbedderOpt,
    engine: str = typer.Option(
        "local", "--engine",
        help="local: fit in this process. dask: build the feature rows on Dask workers and fit with "
             "lightgbm.dask / xgboost.dask (LOG may then be a folder or a quoted glob of Parquet shards).",
    ),
    scheduler: Optional[str] = SchedulerOpt,
    workers: Optional[int] = WorkersOpt,
    partitions: Optional[int] = typer.Option(
        None, "--partitions", min=1,
        help="--engine dask: blocks of training cells \\[default: 50,000 cells each, at least 2 per worker].",
    ),
):
    """Fit a reward model r(query, prompt) on the concatenated query and prompt embeddings; write a model artifact."""
    if engine not in ("local", "dask"):
        raise OirlError(f"unknown engine {engine!r}; use local or dask")
    if engine == "local" and (scheduler or workers or partitions):
        raise OirlError("--scheduler, --workers and --partitions need --engine dask")
    if engine == "dask" and fallback_margin is not None:
        raise OirlError("--fallback-margin needs --engine local")
    check_extras("oirl train", "train", *(["dask"] if engine == "dask" else []))
    # before the log is read or a tree fitted: --out must be new, empty or a model to replace, and writable
    check_paths({"LOG": logs, "--cache-dir": cache_dir}, [Output(out, "--out", kind="artifact")])
    if engine == "dask":
        from .encoders import EncoderSettings
        from .train.dask_fit import DaskTraining, train_distributed
        from .multilog import read_log_set
        from .splits import Protocol
        from .train.reward_model import TrainConfig

        config = TrainConfig(backend=backend, n_estimators=n_estimators, learning_rate=learning_rate, seed=seed)
        proto = Protocol(protocol, test_fraction=test_fraction, seed=seed, heldout_dataset=heldout_dataset)
        # One argument keeps the engine's own reading (a folder or glob of shards of one log).
        log = logs[0] if len(logs) == 1 else read_log_set(logs)
        cluster = DaskTraining(scheduler=scheduler, workers=workers, partitions=partitions,
                               encoder=EncoderSettings(cache_dir=cache_dir, device=device))
        train_distributed(log, proto, config, out, embedder=make_embedder(cache_dir, device, progress=False, spec=embedder),
                          cluster=cluster, compile_library=compile, log_fn=err.print)
    else:
        from . import api

        # A log no model can learn from is refused before the embedder is built (a first static build takes a while).
        api.fit(logs, out, protocol=protocol, heldout_dataset=heldout_dataset, test_fraction=test_fraction,
                backend=backend, n_estimators=n_estimators, learning_rate=learning_rate, seed=seed,
                embedder=embedder, fallback_margin=fallback_margin, compile=compile, cache_dir=cache_dir, device=device,
                progress=True, log_fn=_say)
    err.print(f"wrote model artifact {out}")


@app.command("evaluate")
@cli_errors
def evaluate_cmd(
    model: Path = typer.Argument(..., help="Model artifact folder written by `oirl train`."),
    logs: List[Path] = typer.Argument(
        ..., help="The log(s) the model was trained from, as given to `oirl train` (the split is rebuilt from them).",
        show_default=False,
    ),
    report: Optional[Path] = typer.Option(None, help="Write the full report as JSON here."),
    plot: Optional[Path] = typer.Option(None, help="Write a PNG bar chart here."),
    reliability_plot: Optional[Path] = typer.Option(None, help="Write the reward model's reliability diagram (PNG) here."),
    knn_k: int = typer.Option(50, min=1, help="Neighbours for the kNN baseline."),
    seeds: int = typer.Option(5, min=1, help="Refit the model with seeds 1..K-1 on the same split for the mean and spread."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of a table."),
    cache_dir: Optional[Path] = CacheOpt,
    device: str = DeviceOpt,
):
    """Offline evaluation on held-out queries: reward-model metrics and best-of-N against baselines.

    Embeds with the embedder the model was trained with (recorded in the artifact).
    A model trained on several datasets is also reported per dataset (each against the
    prompt best on its own training rows), with test questions found in each dataset's
    training rows counted (the leakage across datasets).
    """
    check_extras("oirl evaluate", "train", "plot")
    from . import api
    from .evaluation import summaries
    from .report import plot_reliability, plot_summary, print_summary, write_json

    check_paths({"MODEL": model, "LOG": logs, "--cache-dir": cache_dir},
                [Output(report, "--report", JSON_SUFFIXES), Output(plot, "--plot", PNG_SUFFIXES),
                 Output(reliability_plot, "--reliability-plot", PNG_SUFFIXES)])
    loaded = api.load(model, cache_dir=cache_dir, device=device, progress=True, log_fn=_say)
    rep = api.evaluate(loaded, logs, seeds=seeds, knn_k=knn_k)
    summ = summaries(rep)
    if not rep["headroom"]["available"]:
        err.print(f"headroom not measured: {rep['headroom']['reason']}", highlight=False)
    if report:
        write_json(rep, report)
    if plot:
        plot_summary(summ, plot)
    if reliability_plot:
        plot_reliability(rep, reliability_plot)
    if as_json:
        print(json.dumps(summ, indent=2))
    else:
        print_summary(summ)


@app.command("demo")
@cli_errors
def demo_cmd(
    out: Path = typer.Option(Path("oirl-demo"), help="Folder for logs, models and reports."),
    quick: bool = typer.Option(
        False, "--quick",
        help="One dataset in a few minutes: import, train (grouped protocol, one seed) + compile, evaluate, the "
             "cross-fitted re-rank, `oirl score` on 200 held-out questions and the forest plot of the gains "
             "(gains.png); --protocol, --seeds, --transfer, --crossfit and --tradeoff do not apply."),
    datasets: List[str] = typer.Option(
        [], "--dataset", help="Datasets to run (repeatable) \\[default: gsm8k, svamp, mawps; --quick: svamp].",
        show_default=False),
    protocols: List[str] = typer.Option(["published", "grouped"], "--protocol", help="Protocols to run (repeatable)."),
    backend: str = typer.Option("lightgbm", help="lightgbm or xgboost."),
    source: Optional[Path] = typer.Option(None, help="Data folder \\[default: the bundled copy]."),
    compile: bool = typer.Option(True, "--compile/--no-compile"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    seeds: int = typer.Option(5, help="Reward models fitted per split (seeds 0..K-1) for the mean and spread; seed 0 is saved."),
    transfer: bool = typer.Option(
        True, "--transfer/--no-transfer",
        help="With two datasets or more: per dataset, a model trained on the others only (leave-one-dataset-out, "
             "shared questions dropped), against the prompt best on them.",
    ),
    crossfit: bool = typer.Option(
        True, "--crossfit/--no-crossfit",
        help="Per dataset, also `oirl rerank --fast`: every question picked by models that never saw it (grouped "
             "5-fold cross-fitting); a `crossfit` section in summary.json and --json."),
    tradeoff: bool = typer.Option(
        True, "--tradeoff/--no-tradeoff",
        help="With GSM8K and the grouped protocol: the answer policies (the reward model's pick, votes over its top "
             "3 and 5) simulated on the logged GSM8K answers, each against the fixed prompts of the same LLM calls; "
             "tradeoff/gsm8k.json and a `tradeoff` section."),
    cache_dir: Optional[Path] = CacheOpt,
    device: str = DeviceOpt,
    embedder: str = EmbedderOpt,
):
    """Run import -> embed -> train -> compile -> evaluate on the bundled GSM8K, SVAMP and MAWPS logs.

    Leaves per dataset: logs.parquet, model/ (grouped protocol), model-published/,
    report-<protocol>.json; and summary.json, summary.png, gains.png (the forest plot of each
    policy's gain over the best single prompt, with its 95% CI) for all. With --transfer (the
    default) also transfer/<dataset>/model and report.json, and a `transfer` section in
    summary.json and --json; with --crossfit (the default) crossfit/<dataset>/picks.jsonl,
    report.json and report.png, and a `crossfit` section; with --tradeoff (the default)
    tradeoff/gsm8k.json and a `tradeoff` section.

    --quick (what `make demo` runs): one dataset, a few minutes; it leaves <dataset>/logs.parquet,
    model/, report-grouped.json, queries.jsonl and picks.jsonl (oirl score's output),
    crossfit/<dataset>/, summary.json and gains.png, and prints where each is.
    """
    check_extras("oirl demo", "train", "plot")
    from .demo import DemoPlan, run_demo, run_quick

    check_paths({"--source": source, "--cache-dir": cache_dir}, [Output(out, "--out", kind="folder")])
    if quick:
        if len(datasets) > 1:
            raise OirlError("--quick runs one dataset: give --dataset once")
        summaries = run_quick(out, source, make_embedder(cache_dir, device, spec=embedder), err,
                              dataset=datasets[0] if datasets else "svamp", backend=backend, compile_library=compile)
        if as_json:
            print(json.dumps(summaries, indent=2))
        return
    datasets = datasets or list(DATASETS)
    plan = DemoPlan(datasets=tuple(datasets), protocols=tuple(protocols), backend=backend, compile_library=compile,
                    seeds=seeds, transfer=transfer, crossfit=crossfit, tradeoff=tradeoff)
    summaries = run_demo(out, plan, source, make_embedder(cache_dir, device, spec=embedder), err)
    if as_json:
        print(json.dumps(summaries, indent=2))


@app.command("tradeoff")
@cli_errors
def tradeoff_cmd(
    dataset: str = typer.Option("gsm8k", help="Dataset whose answers are logged (gsm8k)."),
    model: Path = typer.Option(Path("oirl-study/gsm8k/model"), help="Reward model artifact trained on that dataset (make study writes this one)."),
    source: Optional[Path] = typer.Option(None, help="Data folder \\[default: the bundled copy]."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    plot: Optional[Path] = typer.Option(None, help="Write a PNG of the points and their Pareto front here."),
    limit: Optional[int] = typer.Option(None, min=1, help="Use only the first N test queries."),
    log: Optional[Path] = typer.Option(None, help="Take answers from this log's 'response' column instead (test queries of the model's protocol)."),
    seeds: int = typer.Option(
        1, "--seeds", min=1,
        help="Refit the model with seeds 1..K-1 on its own split (the bundled GSM8K log, or --log) and report "
             "each policy's mean and spread over the K models; the split is not re-drawn.",
    ),
    cache_dir: Optional[Path] = CacheOpt,
    device: str = DeviceOpt,
):
    """Cost against quality from logged answers: best single, reward-model pick, votes, cascades.

    Embeds with the embedder the model was trained with (recorded in the artifact).
    Fixed-set votes (the k prompts best on the training rows, or the k the model scores
    highest on average) are the query-independent baselines of the same cost; every
    policy gets paired-bootstrap 95% CIs of its difference to the best single prompt and
    to the fixed-set votes with as many calls.
    """
    if plot:
        check_extras("oirl tradeoff --plot", "plot")
    from . import api
    from .tradeoff import plot_tradeoff, run_tradeoff
    from .tradeoff_answers import AnswerSource

    check_paths({"--model": model, "--source": source, "--log": log, "--cache-dir": cache_dir},
                [Output(plot, "--plot", PNG_SUFFIXES)])
    embedder = api.load(model, cache_dir=cache_dir, device=device, progress=True, log_fn=_say).embedder
    result = run_tradeoff(model, embedder, AnswerSource(dataset, source, log, limit), seeds=seeds,
                          progress=err.print)
    if plot:
        plot_tradeoff(result, plot)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        err.print(f"grader agrees with the published verdicts on {result['grader_agreement_with_published_verdicts']:.1%} of answers")
        if result["seeds"] > 1:
            err.print(f"{result['seeds']} seeds: accuracy is the seed mean (± sd); CIs over per-query seed means")

        def ci(d):
            return "-" if d is None else f"{d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"

        print(f"  {'policy':<36} {'calls':>5}  {'accuracy':<14} {'vs best single':<24} "
              f"{'vs fixed vote (best on train)':<30} vs fixed vote (model mean)")
        for p in result["points"]:
            mark = "*" if p["policy"] in result["pareto_front"] else " "
            acc = f"{p['accuracy']:.3f}" + (f" ± {p['accuracy_sd']:.3f}" if result["seeds"] > 1 else "")
            fx = p["vs_fixed_vote"]
            print(f"{mark} {p['policy']:<36} {p['calls_per_query']:5.2f}  {acc:<14} {ci(p['vs_best_single']):<24} "
                  f"{ci(fx['best_on_train']):<30} {ci(fx['model_mean'])}")
        print("* = on the Pareto front; differences with paired-bootstrap 95% CIs")


cli_score.register(app)
cli_collect.register(app)
cli_answer.register(app)
cli_rerank.register(app)


def main():  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
