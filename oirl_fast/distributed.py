"""Scale-out scoring and training on Dask (``dask.distributed``).

``score_distributed(model_dir, inputs, out, ...)`` splits the input JSONL (one file,
a folder or a glob of shards; or an ``--ids`` file with its ``--embeddings``) into
partitions of whole lines, byte ranges that keep their global line numbers.  Each
worker process loads the model artifact once (``_worker_scoring``: the numba kernel
compiles once per worker), scores its partitions with the same code as the local
stream (``score.Scoring.write`` via ``score.score_partition``) and writes each
partition to a temporary name renamed to ``part-00012.jsonl``.  The client records
every finished partition (input range, line count, SHA-256) in ``manifest.json``
(written atomically); a rerun with ``resume=True`` skips the partitions the manifest
lists whose part file is intact.  A partition is a pure function of its input range,
so when a worker dies Dask reruns its partition elsewhere and the part file is
written whole, once.  With ``merge`` the parts are concatenated in input order into
one file (atomically), the same lines ``score_file`` writes.

``train_distributed(log, protocol, config, out_dir, ...)`` fits the same reward
model with ``lightgbm.dask`` or ``xgboost.dask``: the split and the pooling into
(question, prompt) cells run on the client (they touch only the log's text and
verdicts), the [query ‖ prompt] feature rows are built on the workers, one block
of cells each, and the boosting is LightGBM's / XGBoost's own data-parallel
training.  The booster is brought back and written as the usual artifact (native
model, compiled library, kernel-ready trees, calibrator), with the engine noted in
``metrics.engine``.

Every path (inputs, output, model, embedding cache) must be visible at the same
name on the client and on every worker: a shared file system.
"""
from __future__ import annotations

import contextlib
import glob as globmod
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .atomic import atomic_path, write_text
from .errors import OirlError
from .progress import ProgressBar

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "oirl-score-parts"
MANIFEST_VERSION = 1
# Default partition size when --partitions is not given (plus at least 4 per worker).
TARGET_PARTITION_BYTES = 64 << 20
CONNECT_TIMEOUT = "10s"


# --------------------------------------------------------------------------------------
# Cluster


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None, threads_per_worker: int = 1,
                client=None, log: Callable[[str], None] | None = None):
    """Yield a ``distributed.Client``: the one given, one connected to ``scheduler``, or a
    LocalCluster of ``workers`` processes on this machine (closed on exit)."""
    if client is not None:
        yield client
        return
    from distributed import Client

    log = log or (lambda s: None)
    if scheduler:
        try:
            c = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as exc:
            raise OirlError(f"cannot reach the Dask scheduler at {scheduler} ({_first_line(exc)})") from None
        try:
            yield c
        finally:
            c.close()
        return
    n = workers or os.cpu_count() or 1
    log(f"starting a local Dask cluster: {n} worker processes, {threads_per_worker} thread each")
    with local_cluster(n, threads_per_worker) as cluster, Client(cluster) as c:
        yield c


@contextlib.contextmanager
def local_cluster(n_workers: int, threads_per_worker: int = 1, silence_logs: int = 40):
    """A LocalCluster of worker processes that leaves this process's environment alone.

    Dask's nanny sets OMP_NUM_THREADS=1 (and MKL/OpenBLAS, MALLOC_TRIM_THRESHOLD_) in its
    *own* process before spawning each worker; in a LocalCluster that is the client
    process, where an OpenMP runtime loaded afterwards (tl2cgen, LightGBM) would then be
    capped at one thread.  Here those variables go to the workers only, set to the
    cores shared out (torch reads OMP_NUM_THREADS when it is imported there)."""
    import dask
    from distributed import LocalCluster

    t = str(_local_threads(n_workers))
    env = {"OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t, "MALLOC_TRIM_THRESHOLD_": "65536"}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {}}):
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                               dashboard_address=":0", silence_logs=silence_logs, env=env)
    try:
        yield cluster
    finally:
        cluster.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _n_workers(client) -> int:
    return max(1, len(client.nthreads()))


def _local_threads(workers: int | None) -> int:
    """Kernel / LightGBM threads per worker of a LocalCluster: the cores shared out."""
    n = workers or os.cpu_count() or 1
    return max(1, (os.cpu_count() or 1) // n)


# --------------------------------------------------------------------------------------
# Partitions


@dataclass
class Partition:
    index: int
    file: str
    start: int  # first byte (start of a line)
    stop: int  # byte after the last line
    first_line: int  # global line number of the first line (1-based, over all input files)
    lines: int

    @property
    def part(self) -> str:
        return f"part-{self.index:05d}.jsonl"


def expand_inputs(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Input files: one file, a folder (its ``*.jsonl`` files), a glob, or a list of those; name order."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            found = sorted(q for q in p.glob("*.jsonl") if q.is_file())
            if not found:
                raise OirlError("input folder holds no *.jsonl files", p)
            files.extend(found)
        elif any(ch in str(item) for ch in "*?["):
            found = sorted(Path(q) for q in globmod.glob(str(item)) if Path(q).is_file())
            if not found:
                raise OirlError("no input file matches the pattern", item)
            files.extend(found)
        else:
            raise OirlError("input file not found", p)
    seen = set()
    for f in files:
        key = f.resolve()
        if key in seen:
            raise OirlError("input file given twice", f)
        seen.add(key)
    return files


def _cuts(path: Path, parts: int) -> tuple[list[int], list[int], int]:
    """Cut ``path`` into about ``parts`` byte ranges at line starts.

    Returns (cut offsets starting with 0, lines before each cut, total lines); one
    pass over the bytes counting newlines."""
    size = path.stat().st_size
    targets = [size * k // parts for k in range(1, parts)]
    cuts, before = [0], [0]
    pos = nl = ti = 0
    with path.open("rb") as fh:
        while True:
            block = fh.read(1 << 22)
            if not block:
                break
            end = pos + len(block)
            rel = 0
            while ti < len(targets) and targets[ti] < end:
                r = max(targets[ti] - pos, rel)
                j = block.find(b"\n", r) if r < len(block) else -1
                if j < 0:
                    targets[ti] = end  # the line goes on in the next block
                    break
                cut = pos + j + 1
                if cut > cuts[-1] and cut < size:
                    cuts.append(cut)
                    before.append(nl + block.count(b"\n", 0, j + 1))
                ti += 1
                rel = j + 1
            nl += block.count(b"\n")
            last = block[-1:]
            pos = end
    total = nl + (1 if size and last != b"\n" else 0)
    return cuts, before, total


def plan_partitions(files: Sequence[Path], partitions: int | None, workers: int = 1) -> list[Partition]:
    """Partitions of whole lines over ``files`` (each file at least one), about equal in bytes."""
    sizes = [f.stat().st_size for f in files]
    total = sum(sizes)
    if partitions is None:
        partitions = max(4 * workers, -(-total // TARGET_PARTITION_BYTES))
    if partitions < 1:
        raise OirlError(f"--partitions must be at least 1, got {partitions}")
    out: list[Partition] = []
    line0 = 1
    for f, size in zip(files, sizes):
        if size == 0:
            continue
        k = max(1, round(partitions * size / total)) if total else 1
        cuts, before, n_lines = _cuts(f, k)
        bounds = cuts + [size]
        counts = [b - a for a, b in zip(before, before[1:] + [n_lines])]
        for i in range(len(cuts)):
            out.append(Partition(len(out), str(f), bounds[i], bounds[i + 1], line0 + before[i], counts[i]))
        line0 += n_lines
    if not out:
        raise OirlError("input file is empty", files[0] if len(files) == 1 else None)
    return out


# --------------------------------------------------------------------------------------
# Worker side


_WORKER_CACHE: dict = {}


def _file_sha256(path: Path) -> str:
    from .train.artifact import file_sha256

    return file_sha256(path)


def _set_threads(n: int | None) -> None:
    if not n:
        return
    import numba

    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    torch = sys.modules.get("torch")  # only once something embeds: importing torch costs seconds
    if torch is not None and torch.get_num_threads() != n:
        with contextlib.suppress(RuntimeError):
            torch.set_num_threads(n)


def _load_candidates(path: str):
    from .score import Candidates

    with np.load(path, allow_pickle=False) as data:
        return Candidates([str(x) for x in data["ids"]], [str(x) for x in data["texts"]],
                          np.ascontiguousarray(data["embeddings"], dtype=np.float32), str(data["source"]))


def _worker_scoring(job: dict):
    """The worker process's Scoring for this model and these options, loaded on first use."""
    from .score import NpyRows, load_scoring

    key = (job["model_dir"], job["model_key"], json.dumps(job["options"], sort_keys=True), job.get("candidates"))
    hit = _WORKER_CACHE.get(key)
    if hit is None:
        _WORKER_CACHE.clear()  # one model at a time per worker
        o = job["options"]
        cands = _load_candidates(job["candidates"]) if job.get("candidates") else None
        emb = NpyRows(job["embeddings"]) if job.get("embeddings") else None
        scoring = load_scoring(
            job["model_dir"], candidates=cands, query_dim=None if emb is None else emb.shape[1],
            needs_text_embedder=emb is None, top_k=o["top_k"], with_scores=o["with_scores"],
            min_confidence=o["min_confidence"], device=o["device"], batch_size=o["batch_size"],
            precision=o.get("precision", "fp32"), cache_dir=o["cache_dir"], path=o["path"],
        )
        hit = _WORKER_CACHE[key] = (scoring, emb)
    return hit


def _score_task(job: dict, part: dict, out: str) -> dict:
    """One partition, on a worker: score its byte range into ``out`` (atomic); return its record."""
    from .score import score_partition

    _set_threads(job.get("threads"))
    scoring, emb = _worker_scoring(job)
    summary, sha, size = score_partition(scoring, part["file"], part["start"], part["stop"], part["first_line"], out,
                                         emb_matrix=emb, chunk_size=job["options"]["chunk_size"])
    if summary.lines != part["lines"]:  # the input changed under us
        raise OirlError(f"partition {part['index']} has {summary.lines} lines, {part['lines']} when planned",
                        part["file"], part["first_line"])
    return {
        **part, "part": Path(out).name, "status": "done", "sha256": sha, "bytes": size,
        "scored": summary.scored, "errors": summary.errors, "pairs": summary.pairs,
        "low_confidence": summary.low_confidence, "first_errors": summary.first_errors,
        "score_seconds": round(summary.score_seconds, 4), "embed_seconds": round(summary.embed_seconds, 4),
        "seconds": round(summary.seconds, 4), "path": summary.path, "fallback_reason": summary.fallback_reason,
        "worker_pid": os.getpid(),
    }


# --------------------------------------------------------------------------------------
# Client side: scoring


@dataclass
class DistributedScoreSummary:
    input: list
    output: str
    parts_dir: str | None
    merged: bool
    partitions: int = 0
    partitions_resumed: int = 0
    workers: int = 0
    lines: int = 0
    scored: int = 0
    errors: int = 0
    pairs: int = 0
    candidates: int = 0
    path: str = ""
    fallback_reason: str | None = None
    seconds: float = 0.0
    score_seconds: float = 0.0  # summed over workers
    embed_seconds: float = 0.0  # summed over workers
    pairs_per_s: float = 0.0  # pairs / wall seconds of the whole job
    low_confidence: int = 0
    first_errors: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def lines_text(self) -> list[str]:
        where = self.output if self.merged else f"{self.output} ({self.partitions} part files + {MANIFEST})"
        out = [
            f"{self.lines} lines in {where}: {self.scored} scored, {self.errors} errors",
            f"dask: {self.partitions} partitions on {self.workers} workers"
            + (f", {self.partitions_resumed} kept from an earlier run" if self.partitions_resumed else ""),
            f"scoring path: {self.path}" + (f" (fallback: {self.fallback_reason})" if self.fallback_reason else ""),
            *([f"{self.low_confidence} picks below --min-confidence (field low_confidence)"] if self.low_confidence else []),
            f"{self.pairs} pairs over {self.candidates} candidates in {self.seconds:.1f}s wall = {self.pairs_per_s:,.0f} pairs/s "
            f"(worker time: scoring {self.score_seconds:.2f}s, embedding {self.embed_seconds:.1f}s)",
        ]
        for e in self.first_errors:
            out.append(f"  line {e['line']}: {e['error']}")
        if self.errors > len(self.first_errors):
            out.append(f"  ... and {self.errors - len(self.first_errors)} more error records")
        return out


class _Manifest:
    def __init__(self, path: Path, signature: dict, partitions: list[Partition]):
        self.path = path
        self.data = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "complete": False,
                     "job": signature, "partitions": [{**asdict(p), "part": p.part, "status": "pending"}
                                                      for p in partitions]}
        self._last = 0.0

    @classmethod
    def read(cls, path: Path) -> dict | None:
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise OirlError(f"unreadable manifest ({exc}); remove the parts folder to start again", path) from None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise OirlError("not an `oirl score --engine dask` manifest", path)
        return data

    def update(self, rec: dict) -> None:
        self.data["partitions"][rec["index"]] = rec

    def save(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= 1.0:
            write_text(self.path, json.dumps(self.data, indent=1, ensure_ascii=False))
            self._last = now


def _part_intact(parts_dir: Path, rec: dict) -> bool:
    p = parts_dir / rec["part"]
    return (rec.get("status") == "done" and p.is_file() and p.stat().st_size == rec.get("bytes")
            and _file_sha256(p) == rec.get("sha256"))


def _clear_parts(parts_dir: Path) -> None:
    for p in list(parts_dir.glob("part-*.jsonl")) + list(parts_dir.glob(".part-*.tmp")) + \
            [parts_dir / MANIFEST, parts_dir / "candidates.npz"]:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def merge_parts(parts_dir: Path, records: list[dict], out: Path) -> int:
    """Concatenate the part files in input order into ``out`` (atomically), checking each checksum."""
    n = 0
    with atomic_path(out) as tmp:
        with tmp.open("wb") as dst:
            for rec in records:
                h = hashlib.sha256()
                with (parts_dir / rec["part"]).open("rb") as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        h.update(block)
                        dst.write(block)
                if h.hexdigest() != rec["sha256"]:
                    raise OirlError("part file changed since it was written; rerun with --resume", parts_dir / rec["part"])
                n += rec["lines"]
            dst.flush()
            os.fsync(dst.fileno())
    return n


def score_distributed(
    model_dir: str | Path,
    inputs: str | Path | Sequence[str | Path] | None,
    out: str | Path,
    *,
    prompts: str | Path | None = None,
    embeddings: str | Path | None = None,
    ids: str | Path | None = None,
    top_k: int = 1,
    with_scores: bool = False,
    min_confidence: float | None = None,
    strict: bool = False,
    resume: bool = False,
    device: str = "auto",
    batch_size: int = 128,
    precision: str = "fp32",
    chunk_size: int | None = None,
    cache_dir: str | Path | None = None,
    path: str = "auto",
    scheduler: str | None = None,
    workers: int | None = None,
    partitions: int | None = None,
    merge: bool | None = None,
    keep_parts: bool = False,
    threads: int | None = None,
    client=None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> DistributedScoreSummary:
    """Score ``inputs`` on a Dask cluster into ``out``; see the module doc.

    ``merge`` (default: True unless ``out`` is an existing folder or ends with a slash)
    writes one file in input order, the parts going to ``OUT.parts/`` and being removed
    after the merge unless ``keep_parts``; otherwise ``out`` is the folder of part files
    and ``manifest.json``.  ``threads``: kernel threads per worker task (default: the
    cores shared out among a local cluster's workers; numba's default on a remote one).
    """
    from .paths import Output, check_paths
    from .score import DEFAULT_CHUNK, _strict_check, iter_range_items, job_signature, load_scoring, open_input, score_io

    t_start = time.perf_counter()
    log = log or (lambda s: None)
    chunk_size = chunk_size or DEFAULT_CHUNK
    if top_k < 1:
        raise OirlError(f"--top-k must be at least 1, got {top_k}")
    if chunk_size < 1:
        raise OirlError(f"chunk size must be at least 1, got {chunk_size}")
    if partitions is not None and partitions < 1:
        raise OirlError(f"--partitions must be at least 1, got {partitions}")
    model_dir = Path(model_dir)
    out_str = str(out)
    if merge is None:
        merge = not (Path(out).is_dir() or out_str.endswith(("/", os.sep)))
    inputs_, outputs_ = score_io(model_dir, inputs, out, prompts, embeddings, ids, cache_dir,
                                 out_kind="file" if merge else "folder")
    if merge:  # OUT.partial is the local stream's; a merged job stages its parts in OUT.parts/
        outputs_ = [outputs_[0], Output(f"{out}.parts", "--out (its .parts folder)", kind="folder")]
    check_paths(inputs_, outputs_)

    # -- inputs
    emb_path = None
    if embeddings is not None or ids is not None:
        src, emb_matrix = open_input(inputs, embeddings, ids)
        files, emb_path = [src], Path(embeddings).resolve()
    else:
        if inputs is None:
            raise OirlError("no input: give --in queries.jsonl (or --embeddings with --ids)")
        files = expand_inputs(inputs)
        emb_matrix = None
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
    scoring = load_scoring(
        model_dir, prompts=prompts, query_dim=None if emb_matrix is None else emb_matrix.shape[1],
        needs_text_embedder=emb_matrix is None or prompts is not None, top_k=top_k, with_scores=with_scores,
        min_confidence=min_confidence, device=device, batch_size=batch_size, precision=precision,
        cache_dir=cache_dir, path=path, embeddings_label=embeddings, build_scorer=False,
    )
    if strict:
        line0 = 1
        for f in files:
            items = iter_range_items(f, 0, f.stat().st_size, line0, embeddings=emb_matrix is not None)
            _strict_check(items, f, emb_matrix)
            line0 += _cuts(f, 1)[2]

    options = {"top_k": top_k, "with_scores": with_scores, "min_confidence": min_confidence, "device": device,
               "batch_size": batch_size, "precision": precision, "chunk_size": chunk_size,
               "cache_dir": None if cache_dir is None else str(Path(cache_dir).resolve()), "path": path}
    # the same signature as the local stream's OUT.partial.job.json
    signature = job_signature(scoring, files, emb_path, top_k=top_k, with_scores=with_scores,
                              min_confidence=min_confidence, precision=precision, path=path)

    # -- the parts folder: resume, or start clean
    manifest_path = parts_dir / MANIFEST
    old = _Manifest.read(manifest_path) if parts_dir.is_dir() else None
    if parts_dir.is_dir() and old is None and any(parts_dir.iterdir()):
        raise OirlError("output folder exists and is not an `oirl score` parts folder", parts_dir)

    with dask_client(scheduler, workers, client=client, log=log) as cl:
        n_workers = _n_workers(cl)
        if threads is None and scheduler is None and client is None:
            threads = _local_threads(workers)
        kept: dict[int, dict] = {}
        if resume and old is not None:
            if old.get("job") != signature:
                raise OirlError("the parts folder belongs to another job (model, input or options differ); "
                                "remove it or run without --resume", manifest_path)
            plan = [Partition(**{k: r[k] for k in ("index", "file", "start", "stop", "first_line", "lines")})
                    for r in old["partitions"]]
            kept = {r["index"]: r for r in old["partitions"] if _part_intact(parts_dir, r)}
        else:
            if parts_dir.is_dir():
                _clear_parts(parts_dir)
            plan = plan_partitions(files, partitions, n_workers)
        parts_dir.mkdir(parents=True, exist_ok=True)
        manifest = _Manifest(manifest_path, signature, plan)
        for r in kept.values():
            manifest.update(r)
        manifest.save(force=True)

        job = {"model_dir": str(model_dir.resolve()), "model_key": signature["model_sha256"], "options": options,
               "embeddings": None if emb_path is None else str(emb_path), "threads": threads, "candidates": None}
        if prompts is not None:
            cpath = parts_dir / "candidates.npz"
            c = scoring.cands
            with atomic_path(cpath) as tmp:
                with tmp.open("wb") as fh:
                    np.savez(fh, ids=np.array(c.ids), texts=np.array(c.texts), embeddings=c.embeddings,
                             source=np.array(c.source))
            job["candidates"] = str(cpath)
        todo = [p for p in plan if p.index not in kept]
        log(f"scoring {sum(p.lines for p in todo)} lines in {len(todo)} partitions on {n_workers} Dask workers"
            + (f"; {len(kept)} partitions kept from an earlier run" if kept else ""))

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
        path=records[0].get("path", ""), fallback_reason=records[0].get("fallback_reason"),
    )
    for r in records:
        summary.lines += r["lines"]
        summary.scored += r["scored"]
        summary.errors += r["errors"]
        summary.pairs += r["pairs"]
        summary.low_confidence += r.get("low_confidence", 0)
        summary.score_seconds += r.get("score_seconds", 0.0)
        summary.embed_seconds += r.get("embed_seconds", 0.0)
        if len(summary.first_errors) < 5:
            summary.first_errors.extend(r.get("first_errors", [])[: 5 - len(summary.first_errors)])
    if merge:
        merge_parts(parts_dir, records, out)
        if not keep_parts:
            _clear_parts(parts_dir)
            with contextlib.suppress(OSError):
                parts_dir.rmdir()
            summary.parts_dir = None
    summary.seconds = time.perf_counter() - t_start
    summary.pairs_per_s = summary.pairs / summary.seconds if summary.seconds > 0 else 0.0
    return summary


# --------------------------------------------------------------------------------------
# Training


def read_log_parts(log: str | Path | Sequence[str | Path]):
    """A log from one file, a folder of Parquet / JSONL shards, or a glob of them (name order)."""
    import pyarrow as pa

    from .schema import read_logs

    items = [log] if isinstance(log, (str, Path)) else list(log)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix in (".parquet", ".jsonl") and q.is_file())
            if not found:
                raise OirlError("log folder holds no .parquet or .jsonl files", p)
            files.extend(found)
        elif any(ch in str(item) for ch in "*?["):
            found = sorted(Path(q) for q in globmod.glob(str(item)) if Path(q).is_file())
            if not found:
                raise OirlError("no log file matches the pattern", item)
            files.extend(found)
        else:
            raise OirlError("log file not found", p)
    tables = [read_logs(f) for f in files]
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")


def _feature_block(texts: list[str], u: np.ndarray, p: np.ndarray, prompt_emb: np.ndarray,
                   cache_dir: str | None, device: str, batch_size: int, threads: int | None,
                   embedder_record: dict | None = None) -> np.ndarray:
    """On a worker: [query ‖ prompt] rows of one block of cells; the block's queries are embedded
    there (from the shared embedding cache when present) with the client's embedder, checked
    to be the same build."""
    from .embed import Embedder
    from .encoders import encoder_for_record, legacy_record
    from .features import pair_features

    _set_threads(threads)
    record = embedder_record or legacy_record()
    key = ("embedder", cache_dir, device, batch_size, json.dumps(record, sort_keys=True))
    emb = _WORKER_CACHE.get(key)
    if emb is None:
        enc = encoder_for_record(record, cache_dir, device, batch_size)
        emb = _WORKER_CACHE[key] = Embedder(cache_dir=cache_dir, progress=False, encoder=enc)
    return pair_features(emb.embed(texts), prompt_emb, u, p)


def _leaf_table(booster) -> np.ndarray:
    """float64 (trees, max leaves): LightGBM leaf values by leaf index."""
    info = booster.dump_model()["tree_info"]
    width = max(t["num_leaves"] for t in info)
    table = np.zeros((len(info), width))

    def walk(node, t):
        if "leaf_index" in node:
            table[t, node["leaf_index"]] = node["leaf_value"]
        elif "left_child" in node:
            walk(node["left_child"], t)
            walk(node["right_child"], t)
        else:  # a single-leaf tree
            table[t, 0] = node.get("leaf_value", 0.0)

    for t, tree in enumerate(info):
        walk(tree["tree_structure"], t)
    return table


def _loss_curve_block(X: np.ndarray, y: np.ndarray, w: np.ndarray, booster, table: np.ndarray) -> np.ndarray:
    """On a worker: summed weighted cross entropy after each boosting round, on one block of validation cells."""
    leaves = np.asarray(booster.predict(X, pred_leaf=True), dtype=np.int64).reshape(len(X), -1)
    raw = np.cumsum(table[np.arange(table.shape[0]), leaves], axis=1)
    prob = np.clip(1.0 / (1.0 + np.exp(-raw)), 1e-15, 1 - 1e-15)
    loss = -(y[:, None] * np.log(prob) + (1 - y[:, None]) * np.log(1 - prob))
    return (w[:, None] * loss).sum(axis=0)[None, :]


def early_stopping_point(curve: np.ndarray, rounds: int) -> int:
    """Best number of rounds under LightGBM's early-stopping rule (strict improvement, patience ``rounds``)."""
    best, best_loss = 0, np.inf
    for t, v in enumerate(curve):
        if v < best_loss:
            best, best_loss = t, v
        elif t - best >= rounds:
            break
    return best + 1


def _predict_block(X: np.ndarray, model) -> np.ndarray:
    return model.predict(X)


def train_distributed(
    log: str | Path | Sequence[str | Path] | "pa.Table",
    protocol,
    config,
    out_dir: str | Path | None = None,
    *,
    embedder=None,
    cache_dir: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 128,
    scheduler: str | None = None,
    workers: int | None = None,
    partitions: int | None = None,
    threads: int | None = None,
    client=None,
    compile_library: bool = True,
    log_fn: Callable[[str], None] = print,
):
    """Fit the reward model with ``lightgbm.dask`` / ``xgboost.dask``; write the artifact to ``out_dir``.

    Returns the Artifact (or the FittedModel when ``out_dir`` is None).  The training
    cells, their validation split by question group, the early stopping on the
    validation loss and the calibrator are those of the single-machine fit."""
    import dask
    import dask.array as da
    import pyarrow as pa

    from .embed import Embedder
    from .encoders import encoder_record
    from .train.fit import FittedModel, train_question_hashes, training_metadata, training_set, write_artifact
    from .train.reward_model import RewardModel, group_validation_split, lightgbm_params, xgboost_params

    table = log if isinstance(log, pa.Table) else read_log_parts(log)
    cache_dir = None if cache_dir is None else str(Path(cache_dir).resolve())
    if embedder is None:
        embedder = Embedder(cache_dir=cache_dir, device=device, batch_size=batch_size, progress=False)
    ts = training_set(table, protocol, embedder, None if isinstance(log, pa.Table) else log)
    record = encoder_record(embedder.encoder)
    u, p, y, w, groups = ts.cells()
    valid = group_validation_split(groups, config.valid_fraction, config.seed)
    pe = np.ascontiguousarray(ts.train_prompt_emb, dtype=np.float32)
    dim = embedder.dim + pe.shape[1]
    texts = ts.train.texts

    with dask_client(scheduler, workers, client=client, log=log_fn) as cl:
        n_workers = _n_workers(cl)
        if threads is None and scheduler is None and client is None:
            threads = _local_threads(workers)
        n_parts = partitions or max(2 * n_workers, -(-len(y) // 50_000))
        addrs = sorted(cl.nthreads())
        futures = []

        def blocks(mask: np.ndarray, parts: int):
            """Feature rows built on the workers, block i on worker i mod n (labels and weights beside
            them), so every worker holds its share of the data when the boosting starts."""
            idx = np.flatnonzero(mask)
            pieces = [c for c in np.array_split(idx, min(parts, max(1, len(idx)))) if len(c)]
            xs, ys, ws = [], [], []
            for i, c in enumerate(pieces):
                where = [addrs[i % len(addrs)]]
                units, local = np.unique(u[c], return_inverse=True)
                fx = cl.submit(_feature_block, [texts[k] for k in units], local, p[c], pe, cache_dir, device,
                               batch_size, threads, record, workers=where, pure=False)
                fy = cl.submit(np.asarray, y[c], workers=where, pure=False)
                fw = cl.submit(np.asarray, w[c], workers=where, pure=False)
                futures.extend([fx, fy, fw])
                xs.append(da.from_delayed(fx, shape=(len(c), dim), dtype=np.float32))
                ys.append(da.from_delayed(fy, shape=(len(c),), dtype=np.float64))
                ws.append(da.from_delayed(fw, shape=(len(c),), dtype=np.float64))
            return da.concatenate(xs, axis=0), da.concatenate(ys), da.concatenate(ws)

        X_tr, y_tr, w_tr = blocks(~valid, n_parts)
        X_va, y_va, w_va = blocks(valid, max(1, n_workers))
        from distributed import as_completed

        for _ in as_completed(futures):  # waits on the futures' own client, default or not
            pass
        bad = [f for f in futures if f.status == "error"]
        if bad:
            bad[0].result()  # raises the worker's error here
        log_fn(f"  dask: {len(y)} cells in {X_tr.numblocks[0]} + {X_va.numblocks[0]} blocks on {n_workers} workers")

        model = RewardModel(config)
        model.n_features = dim
        t0 = time.perf_counter()
        if config.backend == "lightgbm":
            import lightgbm as lgb
            from lightgbm.dask import DaskLGBMRegressor

            params = lightgbm_params(config)
            params.pop("objective")
            params.pop("num_threads")  # lightgbm.dask uses each worker's own thread count
            est = DaskLGBMRegressor(client=cl, objective="cross_entropy", n_estimators=config.n_estimators,
                                    **_sklearn_lgb_params(params))
            import warnings

            with warnings.catch_warnings():  # the wrapper's own n_jobs default, replaced by the workers' threads
                warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
                est.fit(X_tr, y_tr, sample_weight=w_tr)
            booster = est.booster_
            # Early stopping as the single-machine fit does it, on the validation loss after
            # each round, computed block by block on the workers.
            table_ = _leaf_table(booster)
            b_d, t_d = dask.delayed(booster, pure=True), dask.delayed(table_, pure=True)
            parts = [da.from_delayed(dask.delayed(_loss_curve_block)(xb, yb, wb, b_d, t_d), shape=(1, table_.shape[0]),
                                     dtype=np.float64)
                     for xb, yb, wb in zip(X_va.to_delayed().ravel(), y_va.to_delayed().ravel(), w_va.to_delayed().ravel())]
            curve = cl.compute(da.concatenate(parts, axis=0).sum(axis=0)).result() / float(w[valid].sum())
            model.best_iteration = early_stopping_point(curve, config.early_stopping_rounds)
            model.booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=model.best_iteration))
        else:
            import xgboost.dask as dxgb

            params = xgboost_params(config)
            if threads:
                params["nthread"] = threads
            dtrain = dxgb.DaskDMatrix(cl, X_tr, y_tr, weight=w_tr)
            dvalid = dxgb.DaskDMatrix(cl, X_va, y_va, weight=w_va)
            res = dxgb.train(cl, params, dtrain, num_boost_round=config.n_estimators, evals=[(dvalid, "valid")],
                             early_stopping_rounds=config.early_stopping_rounds, verbose_eval=False)
            booster = res["booster"]
            model.best_iteration = int(booster.best_iteration) + 1
            model.booster = booster[: model.best_iteration]
            model.booster.set_param({"nthread": config.nthread})
        fit_seconds = time.perf_counter() - t0
        prob_valid = cl.compute(X_va.map_blocks(_predict_block, model, drop_axis=1, dtype=np.float64)).result()
        model.finish(y[valid], w[valid], prob_valid)
    log_fn(f"  fitted {config.backend} on dask ({n_workers} workers): {model.best_iteration} trees on "
           f"{len(y)} (question, prompt) cells in {fit_seconds:.1f}s")
    engine = {"name": "dask", "library": f"{config.backend}.dask", "workers": n_workers,
              "partitions": int(X_tr.numblocks[0]), "scheduler": scheduler or "local"}
    metadata = training_metadata(ts, config, model, embedder.model_id, embedder.dim, len(y), fit_seconds,
                                 {"engine": engine}, embedder_record=record)
    fitted = FittedModel(model, metadata, ts.prompt_emb, train_question_hashes(ts.split))
    if out_dir is None:
        return fitted
    return write_artifact(fitted, out_dir, compile_library)


def _sklearn_lgb_params(params: dict) -> dict:
    """LightGBM native parameter names to the scikit-learn wrapper's, where it has its own name."""
    rename = {"learning_rate": "learning_rate", "num_leaves": "num_leaves",
              "min_sum_hessian_in_leaf": "min_child_weight", "min_data_in_leaf": "min_child_samples",
              "feature_fraction": "colsample_bytree", "bagging_fraction": "subsample", "bagging_freq": "subsample_freq",
              "seed": "random_state"}
    return {rename.get(k, k): v for k, v in params.items()}
