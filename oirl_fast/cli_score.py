"""`oirl score`: best-of-N prompt selection for a stream of queries (registered by oirl_fast.cli)."""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from .atomic import write_text
from .cli_common import SchedulerOpt, cli_errors, err
from .errors import OirlError
from .paths import JSON_SUFFIXES, Output, is_stream


def register(app: typer.Typer) -> None:
    """Add the ``score`` command to ``app``."""

    @app.command("score")
    @cli_errors
    def score_cmd(
        model: Path = typer.Argument(..., help="Model artifact folder written by `oirl train`."),
        in_path: Optional[Path] = typer.Option(
            None, "--in", "-i", help='Queries, one JSON object a line: {"id": ..., "query": "..."} (other fields kept), '
                 'plain or gzip-compressed; or a CSV file with a header row (*.csv, *.csv.gz) or a Parquet file '
                 '(both read by --engine local). - reads standard input (a FIFO works too). With --engine dask also a '
                 'folder of *.jsonl shards or a quoted glob. An xz, UTF-16 or other binary file is refused.'
        ),
        out: Path = typer.Option(..., "--out", "-o", help="Picks to write (.jsonl, one line per input line; written as OUT.partial and renamed when "
                                                  "complete); - writes standard output."),
        prompts: Optional[Path] = typer.Option(
            None, "--prompts", help='Candidate prompts (JSONL of {"id", "text"}) \\[default: the model\'s prompt set].'
        ),
        top_k: int = typer.Option(1, "--top-k", min=1, help="Also list the K best candidates with their scores."),
        min_confidence: Optional[float] = typer.Option(
            None, "--min-confidence",
            help="Flag picks whose calibrated success probability is below this (field low_confidence), "
                 "e.g. to route those queries elsewhere.",
        ),
        scores: bool = typer.Option(False, "--scores", help="Also write every candidate's score."),
        device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda: embedding and kernel."),
        batch_size: int = typer.Option(128, "--batch-size", min=1, help="Texts per embedding forward pass."),
        precision: str = typer.Option(
            "fp32", "--precision",
            help="Query embedding precision: fp32, or fp16 (faster on CUDA, but it changed 24% of GSM8K picks; "
                 "see benchmarks/embed_precision.py).",
        ),
        chunk_size: int = typer.Option(2048, "--chunk-size", min=1, help="Input lines read, scored and written at a time."),
        max_line_bytes: int = typer.Option(
            16 << 20, "--max-line-bytes", min=1,
            help="A longer input line becomes an error record without being read into memory.",
        ),
        strict: bool = typer.Option(False, "--strict", help="Stop with exit code 2 at the first bad line, before writing."),
        resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run: keep OUT.partial's complete lines "
                                                        "(refused if it comes from another job: input, model, prompts or options differ)."),
        embeddings: Optional[Path] = typer.Option(
            None, "--embeddings",
            help="Precomputed query embeddings (.npy, float32 (n, d)) instead of --in. float16/float64 are rounded to "
                 "float32 (a value beyond float32's range makes its row an error record); integer arrays are refused."
        ),
        ids: Optional[Path] = typer.Option(None, "--ids", help="With --embeddings: one query id a line, in row order."),
        route: str = typer.Option("auto", "--route", "--path",
                                  help="Scoring route: auto, kernel, compiled or native (for tests and benchmarks).",
                                  hidden=True),
        summary_json: Optional[Path] = typer.Option(None, "--summary", help="Also write the run summary as JSON here."),
        cache_dir: Optional[Path] = typer.Option(
            None, "--cache-dir", help="Embedding cache folder \\[default: $OIRL_CACHE_DIR or ~/.cache/oirl-fast]."
        ),
        engine: str = typer.Option(
            "local", "--engine",
            help="local: stream in this process. dask: split the input into partitions scored by Dask workers "
                 "(--in may then be a folder or a glob of JSONL shards).",
        ),
        scheduler: Optional[str] = SchedulerOpt,
        workers: Optional[int] = typer.Option(
            None, "--workers", min=1,
            help="Processes. --engine local: this one plus forked copies sharing a plain JSON-lines --in file, "
                 "split at line starts, the same output bytes \\[default: one per core, at most 8; one for stdin, "
                 "FIFOs, gzip, CSV, Parquet, --strict and inputs under 4 MiB]. --engine dask without --scheduler: "
                 "the local cluster's workers \\[default: CPU cores].",
        ),
        partitions: Optional[int] = typer.Option(
            None, "--partitions", min=1,
            help="--engine dask: partitions of whole lines \\[default: 64 MiB each, at least 4 per worker].",
        ),
        merge: Optional[bool] = typer.Option(
            None, "--merge/--no-merge",
            help="--engine dask: merge the part files into --out in input order, or keep --out as a folder of "
                 "part-NNNNN.jsonl files plus manifest.json \\[default: merge unless --out is an existing folder].",
        ),
        keep_parts: bool = typer.Option(False, "--keep-parts", help="--engine dask with merge: keep OUT.parts/ after merging."),
        query_field: str = typer.Option("query", "--query-field", help="The input field holding the query text "
                                        "(e.g. question for GSM8K's files)."),
        id_field: str = typer.Option("id", "--id-field", help="The input field holding each row's id (written as "
                                     "\"id\"; a row without one gets null)."),
        template: Optional[str] = typer.Option(
            None, "--template",
            help='The query built from several input fields instead of --query-field, e.g. "{Body} {Ques}" for '
                 "SVAMP's files.",
        ),
        output_field: Optional[str] = typer.Option(
            None, "--output-field",
            help="Write each input row as it is (every field, the query too) plus one field of this name holding "
                 "the outputs (line, id, prompt_id, prompt, score, ...): for inputs with fields named like the "
                 "outputs (prompt, score, ...), which are error records otherwise.",
        ),
        threads: Optional[int] = typer.Option(
            None, "--threads", min=1, help="Threads for embedding and scoring \\[default: every core; with --engine "
                                           "dask: per worker task, the cores shared out].",
        ),
        embedder: Optional[str] = typer.Option(
            None, "--embedder",
            help="Queries are embedded with the embedder recorded in the model. Only for a model trained with a "
                 "local encoder folder that has since moved: its new path (checked to give the same vectors).",
        ),
    ):
        """Pick the best candidate prompt for every query with a trained reward model.

        Output lines follow input lines one to one; a malformed line becomes an error record
        with its line number. Interrupted runs continue with --resume (with --engine dask:
        the partitions already written are kept).
        """
        # here, not at the top: the scoring modules import numba and the kernel, which `oirl --help` does not need
        from .scoring.dask import run_dask
        from .scoring.options import ScoreOptions
        from .scoring.request import DaskEngine, ScoreJob, Source
        from .scoring.stream import run_local

        if engine not in ("local", "dask"):
            raise OirlError(f"unknown engine {engine!r}; use local or dask")
        if engine == "local" and (scheduler or partitions or merge is not None or keep_parts):
            raise OirlError("--scheduler, --partitions, --merge and --keep-parts need --engine dask")
        options = ScoreOptions(top_k=top_k, with_scores=scores, min_confidence=min_confidence, route=route,
                               precision=precision, device=device, batch_size=batch_size, chunk_size=chunk_size,
                               cache_dir=cache_dir, strict=strict, max_line_bytes=max_line_bytes, threads=threads,
                               query_field=query_field, id_field=id_field, template=template, output_field=output_field)
        # every path argument, --summary included, checked here once, before the model is loaded or a line scored
        job = ScoreJob(model, Source(in_path, embeddings, ids), out, options, prompts=prompts, resume=resume,
                       embedder=embedder, also_writes=(Output(summary_json, "--summary", JSON_SUFFIXES),),
                       engine=DaskEngine(scheduler, workers, partitions, merge, keep_parts) if engine == "dask" else None)
        try:
            log = lambda s: err.print(s, highlight=False, soft_wrap=True)  # noqa: E731
            summary = run_dask(job, log=log) if engine == "dask" else run_local(job, log=log, workers=workers)
        except BrokenPipeError:  # `oirl score ... --out - | head`: the reader has had enough
            with contextlib.suppress(OSError, ValueError, AttributeError):  # no second error at exit
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            err.print("standard output was closed; stopped", highlight=False)
            raise typer.Exit(141) from None
        except KeyboardInterrupt:
            kept = ("finished partitions are kept beside it" if engine == "dask"
                    else f"{out} is unchanged, {out}.partial holds the lines scored so far")
            if engine == "local" and is_stream(out):
                raise typer.Exit(130) from None
            err.print(f"interrupted: {kept}; rerun with --resume to continue", highlight=False)
            raise typer.Exit(130) from None
        for line in summary.lines_text():
            err.print(line, highlight=False, soft_wrap=True)
        if summary_json is not None:
            write_text(summary_json, json.dumps(summary.to_dict(), indent=2))
