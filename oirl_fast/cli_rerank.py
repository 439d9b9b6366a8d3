"""`oirl rerank`: cross-fitted best-of-N picks for every question of a logged benchmark (registered by oirl_fast.cli)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .cli_common import CacheOpt, DeviceOpt, EmbedderOpt, cli_errors, err
from .extras import check_extras
from .paths import JSON_SUFFIXES, JSONL_SUFFIXES, PNG_SUFFIXES, Output, check_paths


def register(app: typer.Typer) -> None:
    """Add the ``rerank`` command to ``app``."""

    @app.command("rerank")
    @cli_errors
    def rerank_cmd(
        logs: List[Path] = typer.Argument(
            ..., help="Log file(s) (.parquet or .jsonl) or folders of them; questions are grouped by normalized text "
                      "across all of them, as `oirl train` groups them.", show_default=False),
        out: Path = typer.Option(..., "--out", "-o", help="Picks to write (.jsonl): one line per logged question with "
                                                          "its fold, the out-of-fold top-k prompts with scores and the "
                                                          "logged outcome of each."),
        folds: int = typer.Option(5, "--folds", help="K of the grouped K-fold cross-fitting (>= 2)."),
        inner_folds: int = typer.Option(
            2, "--inner-folds",
            help="Other folds on which each fold's default model and model_margin are chosen (<= K-1; each one "
                 "more costs K/2 fits per candidate; the near-duplicate vote fits nothing and uses all K-1)."),
        candidates: List[str] = typer.Option(
            ["pointwise", "ranking", "knn", "blend"], "--candidate",
            help="Models compared in the same folds (repeatable): pointwise (the `oirl train` model), ranking "
                 "(LightGBM rank_xendcg, questions as groups), knn (faiss), blend (of the others)."),
        top_k: int = typer.Option(3, "--top-k", help="Prompts listed per question, best first."),
        seed: int = typer.Option(0, "--seed", help="Seed of the folds and the models (the picks are this seed's)."),
        seeds: int = typer.Option(1, "--seeds", help="Run seeds SEED..SEED+N-1: the report gives each figure's mean and spread."),
        knn_k: int = typer.Option(20, "--knn-k", help="Neighbours of the kNN candidate."),
        fast: bool = typer.Option(False, "--fast", help="Cheaper GBDT settings (learning rate 0.1, 31 leaves), as `oirl demo` uses."),
        threads: int = typer.Option(1, "--threads", help="LightGBM threads per fit (1: OpenMP threads spin on a busy machine)."),
        report_json: Optional[Path] = typer.Option(None, "--report-json", help="Write the full report as JSON here."),
        plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG: gains with CIs, coverage-gain curves."),
        query_field: str = typer.Option("query", "--query-field", help="The log field holding the question text."),
        id_field: str = typer.Option("query_id", "--id-field", help="The log field holding the question id (a row "
                                                                    "without one: an id from its question text)."),
        template: Optional[str] = typer.Option(
            None, "--template", help='The question built from several log fields, e.g. "{Body} {Ques}".'),
        cache_dir: Optional[Path] = CacheOpt,
        device: str = DeviceOpt,
        embedder: str = EmbedderOpt,
    ):
        """Re-rank a whole logged benchmark honestly: every question is picked by models that never saw it.

        Grouped K-fold cross-fitting over the whole log; per dataset, for the training prompts and
        for all prompts, the default policy and every candidate against the best single prompt
        (chosen on each training side), random, the oracle and the repeat-based ceiling (with the
        share of its headroom the policy captures), with paired-bootstrap 95% CIs over all questions.

        The default policy is the near-duplicate vote: it keeps the best fixed prompt unless the
        question has near-duplicates on the training side (cosine above a threshold, or variants of
        its template: the same text with other numbers, recognized from the embedding once the
        directions in which numbers move it are projected out) on which another prompt won by more
        than a margin; threshold, shrinkage and margin are chosen on the other K-1 folds only. `model_margin` is the model-based abstention (the default model's
        predicted gain must clear a margin chosen on inner folds); `default_model` never abstains.
        """
        check_extras("oirl rerank", "train", "plot")
        from .console import make_console
        from .errors import OirlError
        from .query_rows import QueryFields, read_logs_as
        from .reranking.run import rerank
        from .reranking.report import plot_report, report_table
        from .report import write_json

        check_paths({"LOG": logs, "--cache-dir": cache_dir},
                    [Output(out, "--out", JSONL_SUFFIXES), Output(report_json, "--report-json", JSON_SUFFIXES),
                     Output(plot, "--plot", PNG_SUFFIXES)])
        if template is not None and query_field != "query":
            raise OirlError("give either --query-field or --template, not both")
        fields = QueryFields(query_field, id_field, template)
        # a log whose question and id sit in other fields: read through the shared row mapping
        source = logs if fields == QueryFields("query", "query_id") else read_logs_as(logs, fields)
        result = rerank(source, folds=folds, seed=seed, seeds=seeds, top_k=top_k, inner_folds=inner_folds,
                        candidates=candidates, knn_k=knn_k, fast=fast, nthread=threads, embedder_spec=embedder,
                        cache_dir=cache_dir, device=device, progress=True,
                        log_fn=lambda m: err.print(m, highlight=False))
        result.write_picks(out)
        if report_json:
            write_json(result.report, report_json)
        if plot:
            plot_report(result.report, plot)
        console = make_console(stderr=False, width=150)
        console.print(report_table(result.report))
        err.print(f"wrote {result.units.n_units} picks to {out} ({result.seconds:.0f}s of cross-fitting)", highlight=False)
