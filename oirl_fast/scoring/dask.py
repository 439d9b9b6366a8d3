"""Scale-out scoring on Dask (``dask.distributed``).

``score_distributed(model_dir, inputs, out, ...)`` splits the input JSONL (one file,
a folder or a glob of shards; or an ``--ids`` file with its ``--embeddings``) into
partitions of whole lines, byte ranges that keep their global line numbers.  Each
worker process loads the model artifact once (``_worker_scoring``: the numba kernel
compiles once per worker), scores its partitions with the same code as the local
stream (``Scoring.score_chunk`` via ``score_partition``) and writes each
partition to a temporary name renamed to ``part-00012.jsonl``.  The client records
every finished partition (input range, line count, SHA-256) in ``manifest.json``
(written atomically); a rerun with ``resume=True`` skips the partitions the manifest
lists whose part file is intact.  A partition is a pure function of its input range,
so when a worker dies Dask reruns its partition elsewhere and the part file is
written whole, once.  With ``merge`` the parts are concatenated in input order into
one file (atomically), the same lines ``score_file`` writes.

Every path (inputs, output, model, embedding cache) must be visible at the same
name on the client and on every worker: a shared file system.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..atomic import atomic_path
from ..cluster import dask_client, local_threads, probe_scheduler, set_threads, worker_count
from ..errors import OirlError
from ..locks import locks_output
from ..progress import ProgressBar
from ..query_rows import check_named_fields
from .candidates import Candidates
from .inputs import NpyRows, input_format, is_csv, open_input, strict_check
from .job import Scoring, load_scoring
from .options import ScoreOptions
from .partitions import (MANIFEST, Partition, PartsManifest, clear_parts, expand_inputs, line_cuts, merge_parts,
                         part_intact, plan_partitions)
from .records import iter_range_items
from .request import ScoreJob
from .signature import finished_by, job_signature, write_done
from .stream import score_into
from .summary import ChunkStats, DistributedScoreSummary, ScoreSummary, add_stats

_WORKER_CACHE: dict = {}


@dataclass(frozen=True)
class DaskJob:
    """What every partition task of one job shares: shipped to the workers as is."""

    model_dir: str
    model_sha256: str  # of metadata.json: a model replaced under the same folder is loaded afresh
    options: ScoreOptions
    embeddings: str | None  # the --embeddings .npy, or None for JSONL queries
    candidates: str | None  # candidates.npz of a --prompts file, or None for the model's own prompts
    threads: int | None  # kernel threads per task


def _load_candidates(path: str):
    with np.load(path, allow_pickle=False) as data:
        return Candidates([str(x) for x in data["ids"]], [str(x) for x in data["texts"]],
                          np.ascontiguousarray(data["embeddings"], dtype=np.float32), str(data["source"]))


def _worker_scoring(job: DaskJob) -> Scoring:
    """The worker process's Scoring for this job, loaded on first use (the kernel compiles once per worker)."""
    hit = _WORKER_CACHE.get(job)
    if hit is None:
        _WORKER_CACHE.clear()  # one model at a time per worker
        cands = _load_candidates(job.candidates) if job.candidates else None
        rows = NpyRows(job.embeddings) if job.embeddings else None
        hit = _WORKER_CACHE[job] = load_scoring(job.model_dir, job.options, candidates=cands, rows=rows)
    return hit


def _score_task(job: DaskJob, part: dict, out: str) -> dict:
    """One partition, on a worker: score its byte range into ``out`` (atomic); return its record."""
    set_threads(job.threads)
    scoring = _worker_scoring(job)
    summary, sha, size = score_partition(scoring, Partition(**{k: part[k] for k in _PARTITION_KEYS}), out)
    if summary.lines != part["lines"]:  # the input changed under us
        raise OirlError(f"partition {part['index']} has {summary.lines} lines, {part['lines']} when planned",
                        part["file"], part["first_line"])
    return {
        **part, "part": Path(out).name, "status": "done", "sha256": sha, "bytes": size,
        "scored": summary.scored, "errors": summary.errors, "pairs": summary.pairs,
        "low_confidence": summary.low_confidence, "first_errors": summary.first_errors,
        "score_seconds": round(summary.score_seconds, 4), "embed_seconds": round(summary.embed_seconds, 4),
        "seconds": round(summary.seconds, 4), "route": summary.route, "fallback_reason": summary.fallback_reason,
        "worker_pid": os.getpid(),
    }


_PARTITION_KEYS = ("index", "file", "start", "stop", "first_line", "lines")


def score_partition(scoring: Scoring, part: Partition, out: str | Path) -> tuple[ScoreSummary, str, int]:
    """Score the lines in bytes [part.start, part.stop) of ``part.file`` into ``out``, written atomically.

    Returns (summary, SHA-256 of the file, its size).  Running it twice gives the same
    file, so a partition retried after a lost worker is harmless.
    """
    t0 = time.perf_counter()
    out = Path(out)
    summary = ScoreSummary(input=part.file, output=str(out), candidates=len(scoring.cands),
                           route=scoring.scorer.description, fallback_reason=scoring.scorer.fallback_reason)
    items = scoring.range_items(Path(part.file), part.start, part.stop, part.first_line)
    scoring.where = Path(part.file)
    with atomic_path(out) as tmp:
        with tmp.open("wb") as fh:
            score_into(scoring, items, fh, summary)
            fh.flush()
            os.fsync(fh.fileno())
        digest, size = hashlib.sha256(), 0
        with tmp.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
    summary.lines = summary.scored + summary.errors
    summary.seconds = time.perf_counter() - t0
    summary.pairs_per_s = summary.pairs / summary.score_seconds if summary.score_seconds > 0 else 0.0
    return summary, digest.hexdigest(), size


@locks_output(lambda a: a["out"])  # before the job's path checks, as ever: a second job on OUT says who holds it
def score_distributed(model_dir: str | Path, inputs: str | Path | Sequence[str | Path] | None, out: str | Path,
                      options: ScoreOptions | None = None, **keywords) -> DistributedScoreSummary:
    """Score ``inputs`` on a Dask cluster into ``out``; see the module doc.

    ``options``: a :class:`ScoreOptions`, or its fields as keywords, as for ``score_file``. The other
    keywords are :class:`~oirl_fast.scoring.request.ScoreJob`'s (``prompts``, ``embeddings``, ``ids``,
    ``resume``), :class:`~oirl_fast.scoring.request.DaskEngine`'s (``scheduler``, ``workers``,
    ``partitions``, ``merge``, ``keep_parts``) and :func:`run_dask`'s (``client``, ``progress``, ``log``).

    ``merge`` (default: True unless ``out`` is an existing folder or ends with a slash)
    writes one file in input order, the parts going to ``OUT.parts/`` and being removed
    after the merge unless ``keep_parts``; otherwise ``out`` is the folder of part files
    and ``manifest.json``.  ``threads`` (an option): kernel threads per worker task (default: the
    cores shared out among a local cluster's workers; numba's default on a remote one).
    """
    run = {k: keywords.pop(k) for k in ("client", "progress", "log") if k in keywords}
    return run_dask(ScoreJob.create(model_dir, inputs, out, options, engine="dask", **keywords), **run)


@locks_output(lambda a: a["job"].out)
def run_dask(job: ScoreJob, *, client=None, progress: bool = True,
             log: Callable[[str], None] | None = None) -> DistributedScoreSummary:
    """Run ``job`` (a Dask job) on ``client``, or on a cluster its engine names (a LocalCluster by default)."""
    if job.engine is None:
        raise OirlError("a local job runs with oirl_fast.scoring.stream.run_local")
    return _run_dask(job, client, progress, log or (lambda s: None))


def _run_dask(job: ScoreJob, client, progress: bool, log) -> DistributedScoreSummary:
    t_start = time.perf_counter()
    options, eng, merge = job.options, job.engine, job.merged
    model_dir, out, threads = job.model, job.out, options.threads
    prompts, embeddings, ids = job.prompts, job.source.embeddings, job.source.ids
    inputs, resume = job.source.path, job.resume
    if eng.scheduler and client is None:  # a wrong address is one line now, not after the model is loaded
        probe_scheduler(eng.scheduler)

    # -- inputs
    emb_path = None
    if embeddings is not None:
        src, emb_matrix = open_input(inputs, embeddings, ids)
        files, emb_path = [src], Path(embeddings).resolve()
    else:
        files = expand_inputs(inputs)
        emb_matrix = None
        for f in files:  # partitions are byte ranges of lines: plain JSON lines only
            kind = "CSV" if is_csv(f) else {"parquet": "Parquet", "gzip": "gzip-compressed"}.get(input_format(f))
            if kind is not None:
                raise OirlError(f"{kind} input is read by --engine local; --engine dask partitions plain JSON lines", f)
            check_named_fields(f, options.row_fields.query, options.max_line_bytes)
    files = [f.resolve() for f in files]

    # -- output layout
    out = Path(out).resolve()
    if merge:
        if out.is_dir():
            raise OirlError("output path is a directory (use --no-merge to write part files there)", out)
        parts_dir = out.with_name(out.name + ".parts")
    else:
        if out.exists() and not out.is_dir():
            raise OirlError("--no-merge writes a folder of part files, but the output is a file", out)
        parts_dir = out
    for f in files:
        if f == out or f.parent == parts_dir:
            raise OirlError("output would overwrite the input", out)

    # -- the model, checked once here (workers load it again, once each)
    scoring = load_scoring(model_dir, options, candidates=prompts, rows=emb_matrix, build_scorer=False)
    if options.strict:
        line0 = 1
        for f in files:
            items = iter_range_items(f, 0, f.stat().st_size, line0, embeddings=emb_matrix is not None,
                                     max_line_bytes=options.max_line_bytes, fields=options.row_fields)
            strict_check(items, f, emb_matrix)
            line0 += line_cuts(f, 1)[2]

    # the same signature as the local stream's OUT.partial.job.json
    signature = job_signature(scoring, files, emb_path)

    if resume and merge and out.is_file() and not parts_dir.is_dir():
        same, why = finished_by(out, signature)
        if not same:
            raise OirlError(f"cannot resume: this is a finished output of another job ({why}); run without "
                            "--resume to replace it", out)
        log(f"nothing to do: {out} is the finished output of this job")
        return DistributedScoreSummary(input=[str(f) for f in files], output=str(out), parts_dir=None, merged=True,
                                       candidates=len(scoring.cands))

    # -- the parts folder: resume, or start clean
    manifest_path = parts_dir / MANIFEST
    old = PartsManifest.read(manifest_path) if parts_dir.is_dir() else None
    if parts_dir.is_dir() and old is None and any(parts_dir.iterdir()):
        raise OirlError("output folder exists and is not an `oirl score` parts folder", parts_dir)

    with dask_client(eng.scheduler, eng.workers, client=client, log=log) as cl:
        n_workers = worker_count(cl)
        if threads is None and eng.scheduler is None and client is None:
            threads = local_threads(eng.workers)
        kept: dict[int, dict] = {}
        if resume and old is not None:
            if old.get("job") != signature:
                raise OirlError("the parts folder belongs to another job (model, input or options differ); "
                                "remove it or run without --resume", manifest_path)
            plan = [Partition(**{k: r[k] for k in ("index", "file", "start", "stop", "first_line", "lines")})
                    for r in old["partitions"]]
            kept = {r["index"]: r for r in old["partitions"] if part_intact(parts_dir, r)}
        else:
            if parts_dir.is_dir():
                clear_parts(parts_dir)
            plan = plan_partitions(files, eng.partitions, n_workers)
        parts_dir.mkdir(parents=True, exist_ok=True)
        manifest = PartsManifest(manifest_path, signature, plan)
        for r in kept.values():
            manifest.update(r)
        manifest.save(force=True)

        cpath = None
        if prompts is not None:
            cpath = parts_dir / "candidates.npz"
            c = scoring.cands
            with atomic_path(cpath) as tmp:
                with tmp.open("wb") as fh:
                    np.savez(fh, ids=np.array(c.ids), texts=np.array(c.texts), embeddings=c.embeddings,
                             source=np.array(c.source))
        job = DaskJob(str(model_dir.resolve()), signature["model_sha256"], options,
                      None if emb_path is None else str(emb_path), None if cpath is None else str(cpath), threads)
        todo = [p for p in plan if p.index not in kept]
        log(f"scoring {sum(p.lines for p in todo)} lines in {len(todo)} partitions on {n_workers} Dask workers"
            + (f"; {len(kept)} partitions kept from an earlier run" if kept else ""))

        # here, not at the top: distributed is imported only once a job runs
        from distributed import as_completed

        token = signature["model_sha256"][:8] + hashlib.sha256(str(parts_dir).encode()).hexdigest()[:8]
        futures = [cl.submit(_score_task, job, {**asdict(p)}, str(parts_dir / p.part), pure=False,
                             key=f"oirl-score-{token}-{time.time_ns()}-{p.index:05d}") for p in todo]
        done_lines = sum(r["lines"] for r in kept.values())
        try:
            with ProgressBar("partitions", len(plan), enabled=progress, done=len(kept)) as bar:
                for fut in as_completed(futures):
                    rec = fut.result()
                    manifest.update(rec)
                    manifest.save()
                    done_lines += rec["lines"]
                    bar.advance(1, note=f"{done_lines:,} lines")
        except BaseException:
            for f in futures:
                f.cancel()
            manifest.save(force=True)
            raise
        records = manifest.data["partitions"]
        manifest.data["complete"] = True
        manifest.save(force=True)

    for stray in parts_dir.glob(".part-*.tmp"):  # left by a worker killed mid-write
        with contextlib.suppress(FileNotFoundError):
            stray.unlink()

    summary = DistributedScoreSummary(
        input=[str(f) for f in files], output=str(out), parts_dir=str(parts_dir), merged=bool(merge),
        partitions=len(plan), partitions_resumed=len(kept), workers=n_workers, candidates=len(scoring.cands),
        route=records[0].get("route", ""), fallback_reason=records[0].get("fallback_reason"),
    )
    for r in records:
        summary.lines += r["lines"]
        add_stats(summary, ChunkStats(scored=r["scored"], errors=r["errors"], pairs=r["pairs"],
                                      low_confidence=r.get("low_confidence", 0), score_seconds=r.get("score_seconds", 0.0),
                                      embed_seconds=r.get("embed_seconds", 0.0), first_errors=r.get("first_errors", [])))
    if merge:
        merge_parts(parts_dir, records, out)
        write_done(out, signature, out)
        if not eng.keep_parts:
            clear_parts(parts_dir)
            with contextlib.suppress(OSError):
                parts_dir.rmdir()
            summary.parts_dir = None
    summary.seconds = time.perf_counter() - t_start
    summary.pairs_per_s = summary.pairs / summary.seconds if summary.seconds > 0 else 0.0
    return summary
