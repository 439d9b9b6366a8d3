"""The local runner: one :class:`~oirl_fast.scoring.request.ScoreJob` streamed through this process.

For each input row (a JSON line, a CSV or Parquet row) it writes one output line, in input order:

    {"line": 3, "id": "q3", <other input fields>, "prompt_id": "CoT", "prompt": "...", "score": 0.71}
    {"line": 4, "id": null, "error": "line is not valid JSON (Expecting value ...)"}

``top_k`` > 1 adds ``"top_k": [{"prompt_id", "score"}, ...]`` (best first) and
``with_scores`` adds ``"scores": {prompt_id: score}`` for every candidate.  The
query text itself is not repeated in the output; every other input field is.  An
input field named like an output field (``RESERVED_INPUT_KEYS``) makes its line an
error record, so a user's field is never dropped or overwritten; with ``output_field``
the input row is written as it is and the outputs go under that one key instead.

The input is read once, front to back; progress is counted in its bytes.  Memory is bounded
by the chunk size, whatever the input size.  The output is streamed chunk by chunk into
``OUT.partial`` (beside it ``OUT.partial.job.json``, the job's signature) and renamed to OUT
when complete, so an existing OUT survives an interrupted run, whose ``.partial`` holds a
valid prefix (at worst a partial last line); ``resume`` continues it after the last complete
line without duplicates, if it belongs to the same job (``job_signature``).  ``strict``
stops at the first bad line and leaves no output of this run (a ``.partial`` is put back as it
was; standard output gets nothing).  ``-`` (standard input / output) and FIFOs are streamed through.

Scoring routes (:class:`~oirl_fast.scoring.scorer.Scorer`), best first: the factorized QuickScorer
kernel (numba, CPU or CUDA), the compiled tl2cgen library on materialized pairs, native
``predict`` on materialized pairs.  The summary names the route that ran and why.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from ..atomic import write_errors, write_text
from ..encoders import available_cores
from ..errors import OirlError
from ..jsonl import count_lines
from ..locks import output_lock
from ..paths import is_stdio, is_stream
from ..pipelined import run_pipeline
from ..progress import ProgressBar
from ..query_rows import check_named_fields
from .inputs import open_input
from .forked import Children, Split, auto_workers, plan_split
from .job import Scoring, load_scoring
from .reader import InputReader
from .records import chunks, resume_point
from .request import JOB_SUFFIX, PARTIAL_SUFFIX, ScoreJob
from .signature import JOB_FORMAT, differences, finished_by, job_signature, read_job, write_done
from .summary import ScoreSummary, add_stats

RUN_KEYWORDS = ("progress", "log", "embedder_factory", "pipeline", "workers")


def score_file(model_dir: str | Path, in_path: str | Path | None, out_path: str | Path, options=None,
               **keywords) -> ScoreSummary:
    """Score ``in_path`` (queries: JSON lines, CSV or Parquet) or ``embeddings=`` + ``ids=`` into
    ``out_path``; see the module doc.

    ``options``: a :class:`~oirl_fast.scoring.options.ScoreOptions`, or its fields as keywords
    (``top_k=3, with_scores=True``). The other keywords are :class:`ScoreJob`'s (``prompts``,
    ``embeddings``, ``ids``, ``resume``, ``embedder``) and :func:`run_local`'s (``progress``,
    ``log``, ``embedder_factory``, ``pipeline``, ``workers``).
    """
    run = {k: keywords.pop(k) for k in RUN_KEYWORDS if k in keywords}
    return run_local(ScoreJob.create(model_dir, in_path, out_path, options, **keywords), **run)


def run_local(job: ScoreJob, *, progress: bool = True, log: Callable[[str], None] | None = None,
              embedder_factory: Callable | None = None, pipeline: bool = False, workers: int | None = 1) -> ScoreSummary:
    """Run ``job`` on this machine. ``embedder_factory(cached=bool)``: another embedder (tests);
    ``pipeline=True``: write in a thread of its own (the same output bytes; see :func:`score_into`);
    ``workers``: processes (this one and forked children, :mod:`oirl_fast.scoring.forked`) that share a
    plain JSON-lines input, the same output bytes; None: one per core (``oirl score``'s default). The
    library's default is 1: forking a caller's process is the caller's choice. ``--threads`` (the
    option) is shared out among them."""
    if job.engine is not None:
        raise OirlError("a Dask job runs with oirl_fast.scoring.dask.run_dask")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise OirlError(f"--workers must be an integer of at least 1, got {workers!r}")
    t_start = time.perf_counter()
    # one writer per output: a second job on the same OUT stops here, before it reads OUT.partial
    with contextlib.nullcontext() if is_stream(job.out) else output_lock(job.out, "--out"):
        return _LocalRun(job, log or (lambda s: None), t_start, workers).run(progress, embedder_factory, pipeline)


class _LocalRun:
    def __init__(self, job: ScoreJob, log, t_start: float, workers: int | None = 1):
        self.job, self.log, self.t_start = job, log, t_start
        self.workers = auto_workers(job.options.threads) if workers is None else workers
        out = job.out
        self.partial = out.with_name(out.name + PARTIAL_SUFFIX)
        self.job_path = out.with_name(out.name + JOB_SUFFIX)

    def run(self, progress: bool, embedder_factory, pipeline: bool) -> ScoreSummary:
        job, o, out = self.job, self.job.options, self.job.out
        src, rows = open_input(job.source.path, job.source.embeddings, job.source.ids)
        in_stream, out_stream = is_stream(src), is_stream(out)
        if job.resume and (in_stream or out_stream):
            raise OirlError("--resume needs a regular input file and output file (not standard input/output or a FIFO)",
                            out if out_stream else src)
        scoring = load_scoring(job.model, o, candidates=job.prompts, rows=rows, embedder_factory=embedder_factory,
                               embedder=job.embedder, log=self.log)
        scoring.where = Path("<stdin>" if is_stdio(src) else str(src))

        skip, signature = 0, None
        if not out_stream:
            signature = {"format": JOB_FORMAT, "version": 2, **job_signature(scoring, [src], job.source.embeddings)}
            skip = self._resume_point(signature)
            if skip is None:
                return self._nothing_to_do(scoring, src)
        if rows is None and not in_stream:  # a --query-field every row lacks: one line, not a file of errors
            check_named_fields(src, o.row_fields.query, o.max_line_bytes)
        split = plan_split(src, skip, self.workers, o.strict)
        processes = 1 + (len(split.ranges) if split else 0)
        reader = InputReader(src, skip, o.row_fields, o.max_line_bytes, ids=rows is not None)
        summary = ScoreSummary(input=reader.label, output="<stdout>" if is_stdio(out) else str(out), resumed=skip,
                               candidates=len(scoring.cands), route=scoring.scorer.description,
                               fallback_reason=scoring.scorer.fallback_reason)
        items = reader.items()
        if in_stream:  # its first bytes are checked (UTF-16, binary) before any output file is made
            first = next(items, None)
            items = itertools.chain([] if first is None else [first], items)
        if not o.strict:  # a strict run that stops says one line, the error
            self.log(f"scoring {reader.label} against {len(scoring.cands)} candidates with the "
                     f"{scoring.scorer.description}" + (f" in {processes} processes" if split else "")
                     + (f"; resuming after line {skip}" if skip else ""))
        bar = ProgressBar("scoring", reader.total, enabled=progress, in_bytes=True)
        # the threads (the cores this process may run on, as the embedder counts them) shared out
        threads = max(1, (o.threads or available_cores()) // processes)
        try:
            with Children(scoring, split, src, threads, out) if split else contextlib.nullcontext() as children:
                if children is not None:  # before numba's thread pool starts here: it cannot survive a fork
                    children.start()
                scoring.use_threads(threads)
                self._write(scoring, items, summary, _Progress(bar, reader, summary, skip, children), pipeline,
                            signature, children)
        except KeyboardInterrupt:
            summary.interrupted = True
            raise
        finally:
            summary.lines = skip + summary.scored + summary.errors
            summary.seconds = time.perf_counter() - self.t_start
            summary.pairs_per_s = summary.pairs / summary.score_seconds if summary.score_seconds > 0 else 0.0
        return summary

    def _resume_point(self, signature: dict) -> int | None:
        """Lines of ``OUT.partial`` this run continues after (0: from the start); None: OUT is
        already the finished output of this job."""
        job, partial, out = self.job, self.partial, self.job.out
        old = read_job(self.job_path) if self.job_path.exists() else None
        if partial.exists() and old is None:
            raise OirlError("exists without the job record oirl score writes beside it, so it is not ours; "
                            "remove or rename it", partial)
        if job.resume and partial.exists():
            if old != signature:
                raise OirlError(f"cannot resume: {partial.name} comes from another job ({differences(old, signature)} "
                                "differ); run without --resume to start again", partial)
            return resume_point(partial, job.options.output_field)
        if job.resume and out.exists():
            same, why = finished_by(out, _job_part(signature))
            if not same:
                raise OirlError(f"cannot resume: this is a finished output of another job ({why}); run without "
                                "--resume to replace it", out)
            return None
        if job.resume:
            self.log(f"nothing to resume ({partial.name} does not exist): scoring from the first line")
        return 0

    def _nothing_to_do(self, scoring: Scoring, src) -> ScoreSummary:
        out = self.job.out
        self.log(f"nothing to do: {out} is the finished output of this job")
        lines = count_lines(out)
        return ScoreSummary(input=str(src), output=str(out), resumed=lines, lines=lines,
                            candidates=len(scoring.cands), route=scoring.scorer.description,
                            fallback_reason=scoring.scorer.fallback_reason)

    def _write(self, scoring: Scoring, items, summary: ScoreSummary, progress: "_Progress", pipeline: bool,
               signature: dict | None, children: Children | None = None) -> None:
        out, strict = self.job.out, self.job.options.strict

        def stream_into(fh) -> None:
            with progress.bar:
                if children is None:
                    score_into(scoring, items, fh, summary, progress.advance, pipeline)
                    return
                score_into(scoring, itertools.islice(items, children.split.parent_lines), fh, summary,
                           progress.advance, pipeline)
                children.finish(fh, summary, progress.advance)

        if is_stream(out):
            label = "<stdout>" if is_stdio(out) else out
            if strict:  # nothing reaches the stream unless every line is good
                with tempfile.TemporaryFile() as tmp:
                    stream_into(tmp)
                    tmp.seek(0)
                    with write_errors(label), _open_stream(out) as fh:
                        shutil.copyfileobj(tmp, fh)
                return
            with write_errors(label), _open_stream(out) as fh:
                stream_into(fh)
            return
        # before the .partial; ASCII, so a file name that is not valid UTF-8 is written as its escape
        write_text(self.job_path, json.dumps(signature, indent=1, ensure_ascii=True))
        kept = self.partial.stat().st_size if summary.resumed else 0
        try:
            with write_errors(self.partial), self.partial.open("ab" if summary.resumed else "wb") as fh:
                stream_into(fh)
                fh.flush()
                os.fsync(fh.fileno())
        except OirlError:
            if strict:  # the run's lines go: the .partial is what it was before this run
                if kept:
                    os.truncate(self.partial, kept)
                else:
                    self.partial.unlink(missing_ok=True)
                    self.job_path.unlink(missing_ok=True)
            raise
        write_done(out, _job_part(signature), self.partial)
        with write_errors(out, self.partial):
            os.replace(self.partial, out)
        self.job_path.unlink(missing_ok=True)


class _Progress:
    """The bar in input bytes, with the pairs/s note, advanced as chunks are written (this process's
    and, estimated from their lines, the forked children's)."""

    def __init__(self, bar: ProgressBar, reader: InputReader, summary: ScoreSummary, skip: int,
                 children: Children | None = None):
        self.bar, self.reader, self.summary, self.skip, self.pos = bar, reader, summary, skip, 0
        self.children = children

    def advance(self) -> None:
        s = self.summary
        s.lines = self.skip + s.scored + s.errors
        pos = self.reader.position()
        if self.children is not None:  # this process reads up to the first child's range
            pos = min(pos, self.children.split.ranges[0].start) + self.children.bytes_done()
        self.bar.advance(max(0, pos - self.pos), note=f"{s.lines:,} lines, {s.pairs / self.bar.elapsed:,.0f} pairs/s")
        self.pos = max(self.pos, pos)


def score_into(scoring: Scoring, items, fh, summary, on_chunk: Callable[[], None] | None = None,
               pipeline: bool = False) -> None:
    """Score ``items`` chunk by chunk (``options.chunk_size`` rows) into the binary file ``fh``,
    one record a line, adding each chunk's stats to ``summary`` (in input order).

    ``pipeline=True``: write finished chunks in a thread of their own while this thread reads,
    embeds and scores the next one (:mod:`oirl_fast.pipelined`); the same bytes in the same order.
    Off by default: on 2 cores the writer thread competes with the embedding threads and the serial
    loop was faster (pipelined 0.91x serial, ``benchmarks/score_end_to_end.py --distinct``)."""
    def write(chunk, result) -> None:
        lines, stats = result
        t0 = time.perf_counter()
        # A lone surrogate can only sit inside a JSON string, where backslashreplace
        # writes it as the valid escape \udcXX, exactly what ensure_ascii would.
        fh.write("".join(lines).encode("utf-8", "backslashreplace"))
        fh.flush()
        summary.write_seconds += time.perf_counter() - t0
        add_stats(summary, stats)
        if on_chunk is not None:
            on_chunk()

    run_pipeline(chunks(items, scoring.options.chunk_size), scoring.score_chunk, write, summary, threaded=pipeline)


def _open_stream(out: Path):
    if is_stdio(out):
        return contextlib.nullcontext(sys.stdout.buffer)
    return out.open("wb")  # a FIFO or a device: written through


def _job_part(signature: dict) -> dict:
    return {k: v for k, v in signature.items() if k not in ("format", "version")}
