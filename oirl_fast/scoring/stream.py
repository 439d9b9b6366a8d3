"""Streaming best-of-N scoring: for each query of a JSONL file, pick the best candidate prompt.

``score_file`` reads the input in chunks, embeds each chunk's queries (or reads
precomputed embeddings), scores every (query, candidate) pair with the reward
model and appends one output line per input line, in input order:

    {"line": 3, "id": "q3", <other input fields>, "prompt_id": "CoT", "prompt": "...", "score": 0.71}
    {"line": 4, "id": null, "error": "line is not valid JSON (Expecting value ...)"}

``top_k`` > 1 adds ``"top_k": [{"prompt_id", "score"}, ...]`` (best first) and
``with_scores`` adds ``"scores": {prompt_id: score}`` for every candidate.  The
query text itself is not repeated in the output; every other input field is.  An
input field named like an output field (``RESERVED_INPUT_KEYS``) makes its line an
error record, so a user's field is never dropped or overwritten.

Robustness: memory is bounded by the chunk size, whatever the input size.  The
output is streamed chunk by chunk into ``OUT.partial`` (beside it
``OUT.partial.job.json``, the job's signature) and renamed to OUT when complete, so
an existing OUT survives an interrupted run, whose ``.partial`` holds a valid prefix
(at worst a partial last line); ``resume=True`` continues it after the last complete
line without duplicates, if it belongs to the same job (``job_signature``).
``strict=True`` checks the whole input first and raises on the first bad line before
the output is touched.  ``-`` (standard input / output) and FIFOs are streamed through.

Scoring routes (:class:`~oirl_fast.scoring.scorer.Scorer`), best first: the factorized QuickScorer
kernel (numba, CPU or CUDA), the compiled tl2cgen library on materialized pairs, native
``predict`` on materialized pairs.  The summary names the route that ran and why.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

from ..atomic import write_errors, write_text
from ..errors import OirlError
from ..locks import output_lock
from ..paths import check_paths, is_stdio, is_stream
from ..progress import ProgressBar
from .inputs import JOB_SUFFIX, PARTIAL_SUFFIX, input_format, open_input, score_io, spool, strict_check
from .job import JOB_FORMAT, differences, finished_by, job_signature, load_scoring, read_job, write_done
from .options import ScoreOptions, options_from
from .records import count_input_lines, iter_embedding_items, iter_jsonl_items, resume_point
from .summary import ScoreSummary


def score_file(
    model_dir: str | Path,
    in_path: str | Path | None,
    out_path: str | Path,
    options: ScoreOptions | None = None,
    *,
    prompts: str | Path | None = None,
    embeddings: str | Path | None = None,
    ids: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    embedder_factory: Callable | None = None,
    embedder: str | None = None,
    pipeline: bool = True,
    **option_fields,
) -> ScoreSummary:
    """Score ``in_path`` (JSONL queries) or ``embeddings`` + ``ids`` into ``out_path``; see the module doc.

    ``options``: a :class:`ScoreOptions`, or its fields as keywords (``top_k=3, with_scores=True``).

    ``in_path`` / ``out_path`` may be ``-`` (standard input / output) or a FIFO, streamed
    through. A file output is written as ``OUT.partial`` (with ``OUT.partial.job.json``,
    the job's signature, beside it) and renamed to OUT when complete, so an existing OUT
    survives an interrupted run; ``resume`` continues the ``.partial`` of the same job.
    ``pipeline=False`` reads, scores and writes in one thread (same output bytes).
    """
    t_start = time.perf_counter()
    log = log or (lambda s: None)
    out_path = Path(out_path)
    options = options_from(options, option_fields)

    # -- input and output checks that stop the run, before anything is written or loaded
    check_paths(*score_io(model_dir, in_path, out_path, prompts, embeddings, ids, options.cache_dir))
    # one writer per output: a second job on the same OUT stops here, before it reads OUT.partial
    with contextlib.nullcontext() if is_stream(out_path) else output_lock(out_path, "--out"):
        return _score_file(model_dir, in_path, out_path, options, prompts, embeddings, ids, resume, progress, log,
                           embedder_factory, embedder, pipeline, t_start)


def _job_part(signature: dict) -> dict:
    return {k: v for k, v in signature.items() if k not in ("format", "version")}


def _score_file(model_dir, in_path, out_path, options, prompts, embeddings, ids, resume, progress, log,
                embedder_factory, embedder, pipeline, t_start) -> ScoreSummary:
    src, emb_matrix = open_input(in_path, embeddings, ids)
    in_stream, out_stream = is_stream(src), is_stream(out_path)
    if resume and (in_stream or out_stream):
        raise OirlError("--resume needs a regular input file and output file (not standard input/output or a FIFO)",
                        out_path if out_stream else src)
    label = "<stdin>" if is_stdio(src) else str(src)

    scoring = load_scoring(
        model_dir, options, prompts=prompts, query_dim=None if emb_matrix is None else emb_matrix.shape[1],
        needs_text_embedder=emb_matrix is None or prompts is not None, embedder_factory=embedder_factory,
        embeddings_label=embeddings, log=log, embedder=embedder,
    )
    cands, scorer = scoring.cands, scoring.scorer

    spooled = None
    try:
        if options.strict and in_stream:
            src = spooled = spool(src)  # --strict reads the input twice
            if emb_matrix is None:
                input_format(spooled)
        if options.strict:
            items = iter_jsonl_items(src, 0, options.max_line_bytes) if emb_matrix is None else iter_embedding_items(src, 0)
            strict_check(items, Path(label), emb_matrix)

        partial = out_path.with_name(out_path.name + PARTIAL_SUFFIX)
        job_path = out_path.with_name(out_path.name + JOB_SUFFIX)
        skip, signature = 0, None
        if not out_stream:
            signature = {"format": JOB_FORMAT, "version": 2,
                         **job_signature(scoring, [src], embeddings)}
            old = read_job(job_path) if job_path.exists() else None
            if partial.exists() and old is None:
                raise OirlError("exists without the job record oirl score writes beside it, so it is not ours; "
                                "remove or rename it", partial)
            if resume and partial.exists():
                if old != signature:
                    raise OirlError(f"cannot resume: {partial.name} comes from another job ({differences(old, signature)} "
                                    "differ); run without --resume to start again", partial)
                skip = resume_point(partial)
            elif resume and out_path.exists():
                same, why = finished_by(out_path, _job_part(signature))
                if not same:
                    raise OirlError(f"cannot resume: this is a finished output of another job ({why}); run without "
                                    "--resume to replace it", out_path)
                log(f"nothing to do: {out_path} is the finished output of this job")
                lines = count_input_lines(out_path)
                return ScoreSummary(input=label, output=str(out_path), resumed=lines, lines=lines,
                                    candidates=len(cands), route=scorer.description,
                                    fallback_reason=scorer.fallback_reason)
            elif resume:
                log(f"nothing to resume ({partial.name} does not exist): scoring from the first line")
        total_lines = None if in_stream and spooled is None else count_input_lines(src)
        if total_lines is not None and skip > total_lines:
            raise OirlError(f"cannot resume: the output has {skip} lines, the input only {total_lines}", partial)

        summary = ScoreSummary(input=label, output="<stdout>" if is_stdio(out_path) else str(out_path), resumed=skip,
                               candidates=len(cands), route=scorer.description,
                               fallback_reason=scorer.fallback_reason)
        items = iter_jsonl_items(src, skip, options.max_line_bytes) if emb_matrix is None else iter_embedding_items(src, skip)
        if in_stream:  # its first bytes are checked (gzip, UTF-16, binary) before any output file is made
            first = next(items, None)
            items = itertools.chain([] if first is None else [first], items)
        log(f"scoring {'the' if total_lines is None else total_lines - skip} lines against {len(cands)} candidates "
            f"with the {scorer.description}" + (f"; resuming after line {skip}" if skip else ""))
        bar = ProgressBar("scoring", None if total_lines is None else total_lines - skip, enabled=progress)

        def advance(n: int) -> None:
            summary.lines = skip + summary.scored + summary.errors
            bar.advance(n, note=f"{summary.pairs / bar.elapsed:,.0f} pairs/s")

        try:
            if is_stdio(out_path):
                with write_errors("<stdout>"), bar:
                    scoring.write(items, sys.stdout.buffer, summary, emb_matrix=emb_matrix, src=Path(label),
                                  on_chunk=advance, pipeline=pipeline)
            elif out_stream:  # a FIFO or a device: written through
                with write_errors(out_path), out_path.open("wb") as fh, bar:
                    scoring.write(items, fh, summary, emb_matrix=emb_matrix, src=Path(label),
                                  on_chunk=advance, pipeline=pipeline)
            else:
                # before the .partial; ASCII, so a file name that is not valid UTF-8 is written as its escape
                write_text(job_path, json.dumps(signature, indent=1, ensure_ascii=True))
                with write_errors(partial), partial.open("ab" if skip else "wb") as fh, bar:
                    scoring.write(items, fh, summary, emb_matrix=emb_matrix, src=Path(label),
                                  on_chunk=advance, pipeline=pipeline)
                    fh.flush()
                    os.fsync(fh.fileno())
                write_done(out_path, _job_part(signature), partial)
                with write_errors(out_path, partial):
                    os.replace(partial, out_path)
                job_path.unlink(missing_ok=True)
        except KeyboardInterrupt:
            summary.interrupted = True
            summary.lines = skip + summary.scored + summary.errors
            raise
        finally:
            summary.seconds = time.perf_counter() - t_start
            summary.pairs_per_s = summary.pairs / summary.score_seconds if summary.score_seconds > 0 else 0.0
    finally:
        if spooled is not None:
            spooled.unlink(missing_ok=True)
    return summary
