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

Scoring paths, best first: the factorized QuickScorer kernel (numba, CPU or
CUDA), the compiled tl2cgen library on materialized pairs, native ``predict`` on
materialized pairs.  The summary names the path that ran and why.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .errors import OirlError
from .jsonl import BadLine, count_lines, iter_lines, iter_objects, iter_stream_lines, parse_json_line
from .paths import JSON_SUFFIXES, JSONL_SUFFIXES, Output, check_paths, is_stdio, is_stream
from .progress import ProgressBar

DEFAULT_CHUNK = 2048
# Materialized fallback paths build at most this many pair rows at a time.
FALLBACK_PAIRS = 1 << 16
OUTPUT_KEYS = ("line", "id", "prompt_id", "prompt", "score", "confidence", "low_confidence", "top_k", "scores", "error")
# Input fields that would collide with what oirl writes: such a line becomes an error record
# (whatever the options), so a user's field is never dropped or overwritten.
RESERVED_INPUT_KEYS = tuple(k for k in OUTPUT_KEYS if k != "id")
PARTIAL_SUFFIX = ".partial"  # OUT is written as OUT.partial and renamed when complete
JOB_SUFFIX = ".partial.job.json"  # beside it: which job wrote it, checked by --resume
JOB_FORMAT = "oirl-score-job"


# --------------------------------------------------------------------------------------
# Candidates


@dataclass
class Candidates:
    ids: list[str]
    texts: list[str]
    embeddings: np.ndarray  # float32 (P, d)
    source: str  # "model" or the prompts file

    def __len__(self) -> int:
        return len(self.ids)


def model_candidates(artifact) -> Candidates:
    meta = artifact.metadata
    return Candidates(
        ids=[str(p["id"]) for p in meta.prompts],
        texts=[str(p["text"]) for p in meta.prompts],
        embeddings=np.ascontiguousarray(artifact.prompt_embeddings, dtype=np.float32),
        source="model",
    )


def read_prompts_file(path: str | Path, embedding_model: str, dim: int, embedder_factory: Callable | None) -> Candidates:
    """Candidates from a JSONL of ``{"id", "text"}`` records (optionally with a precomputed
    ``"embedding"`` and the ``"embedding_model"`` that produced it).  Texts without an
    embedding are embedded once and cached by the embedder."""
    path = Path(path)
    if not path.is_file():
        raise OirlError("prompts file not found", path)
    ids, texts, given = [], [], {}
    seen: dict[str, int] = {}
    for n, rec in iter_objects(path, what="prompt record"):
        if "id" not in rec or "text" not in rec:
            raise OirlError("prompt record needs both \"id\" and \"text\"", path, n)
        if not isinstance(rec["text"], str):
            raise OirlError("prompt \"text\" must be a string", path, n)
        em = rec.get("embedding_model")
        if em is not None and em != embedding_model:
            raise OirlError(
                f"prompt embedded with {em!r}, but the model was trained on {embedding_model!r} embeddings",
                path, n,
            )
        pid = str(rec["id"])
        if pid in seen:
            raise OirlError(f"duplicate prompt id {pid!r} (first on line {seen[pid]})", path, n)
        seen[pid] = n
        if "embedding" in rec:
            if em is None:
                raise OirlError("a precomputed \"embedding\" needs its \"embedding_model\"", path, n)
            try:
                vec = np.asarray(rec["embedding"], dtype=np.float32)
            except (TypeError, ValueError):
                raise OirlError("\"embedding\" must be a list of numbers", path, n) from None
            if vec.shape != (dim,):
                raise OirlError(f"\"embedding\" has shape {vec.shape}, the model expects ({dim},)", path, n)
            if not np.isfinite(vec).all():
                raise OirlError("\"embedding\" contains NaN or inf", path, n)
            given[len(ids)] = vec
        ids.append(pid)
        texts.append(rec["text"])
    if not ids:
        raise OirlError("prompts file has no prompts", path)
    emb = np.empty((len(ids), dim), dtype=np.float32)
    todo = [i for i in range(len(ids)) if i not in given]
    if todo:
        if embedder_factory is None:
            raise OirlError("prompts without embeddings need the embedding model", path)
        embedder = embedder_factory(cached=True)
        if embedder.model_id != embedding_model:
            raise OirlError(
                f"this oirl-fast embeds with {embedder.model_id!r}, the model expects {embedding_model!r}", path
            )
        vecs = embedder.embed([texts[i] for i in todo])
        if vecs.shape[1] != dim:
            raise OirlError(f"prompt embeddings have dimension {vecs.shape[1]}, the model expects {dim}", path)
        emb[todo] = vecs
    for i, v in given.items():
        emb[i] = v
    return Candidates(ids, texts, emb, str(path))


# --------------------------------------------------------------------------------------
# Scorers: the kernel, or a fallback on materialized pairs


class PairScorer:
    """``top(Q, k)`` -> (idx (n, k), score (n, k)) best first; ``all(Q)`` -> (n, P) probabilities."""

    path: str = "?"
    reason: str | None = None

    def top(self, Q: np.ndarray, k: int):
        full = self.all(Q)
        return _top_k(full, k)

    def all(self, Q: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


def _top_k(full: np.ndarray, k: int):
    k = max(1, min(k, full.shape[1]))
    # stable sort on -score: ties go to the lower prompt index, like the kernel
    idx = np.argsort(-full, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(full, idx, axis=1)


class KernelScorer(PairScorer):
    def __init__(self, scorer, candidates: Candidates, device: str):
        self.scorer = scorer
        self.prompts = scorer.prepare(candidates.embeddings)
        self.path = f"kernel ({'numba CUDA' if device == 'cuda' else 'numba CPU'})"

    def top(self, Q, k):
        return self.scorer.best_of_n(Q, self.prompts, top_k=k)

    def all(self, Q):
        return self.scorer.score(Q, self.prompts)


class MaterializedScorer(PairScorer):
    """Builds [query ‖ prompt] rows (bounded batches) and calls ``predict``."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], candidates: Candidates, path: str, reason: str):
        self.predict = predict
        self.P = np.ascontiguousarray(candidates.embeddings, dtype=np.float32)
        self.path, self.reason = path, reason

    def all(self, Q):
        from .features import grid_features

        Q = np.ascontiguousarray(Q, dtype=np.float32)
        if np.isnan(Q).any():
            raise OirlError("query embeddings contain NaN")
        out = np.empty((len(Q), len(self.P)), dtype=np.float64)
        step = max(1, FALLBACK_PAIRS // max(1, len(self.P)))
        for a in range(0, len(Q), step):
            q = Q[a : a + step]
            out[a : a + len(q)] = np.asarray(self.predict(grid_features(q, self.P)), dtype=np.float64).reshape(
                len(q), len(self.P)
            )
        return out


def resolve_kernel_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise OirlError(f"unknown device {device!r}; use auto, cpu or cuda")
    if device == "cpu":
        return "cpu"
    try:
        from numba import cuda

        available = bool(cuda.is_available())
    except Exception:  # pragma: no cover - numba without CUDA support
        available = False
    if device == "cuda" and not available:
        raise OirlError("--device cuda asked for, but numba sees no CUDA GPU")
    return "cuda" if available else "cpu"


def make_scorer(artifact, candidates: Candidates, device: str = "auto", path: str = "auto",
                log: Callable[[str], None] = lambda s: None) -> PairScorer:
    """The fastest path that can run this model: kernel, else compiled library, else native predict.

    ``path`` forces one of "kernel", "compiled", "native" (for tests and benchmarks).  A compiled
    library built for another platform or library version is rebuilt first, never loaded.
    """
    if path not in ("auto", "kernel", "compiled", "native"):
        raise OirlError(f"unknown scoring path {path!r}")
    reasons = []
    if path in ("auto", "kernel"):
        from .kernels.quickscorer import FactorizedScorer, UnsupportedModel

        try:
            kdev = resolve_kernel_device(device)
            if kdev == "cuda":
                from .kernels.cuda import CudaFactorizedScorer

                scorer = CudaFactorizedScorer.from_artifact(artifact)
            else:
                scorer = FactorizedScorer.from_artifact(artifact)
            return KernelScorer(scorer, candidates, kdev)
        except UnsupportedModel as exc:
            if path == "kernel":
                raise OirlError(f"the kernel cannot score this model: {exc}", artifact.path) from None
            reasons.append(f"kernel: {exc}")
    if path in ("auto", "compiled"):
        if artifact.compiled_library is not None:
            try:
                from .train.artifact import usable_library
                from .train.compile import CompiledPredictor

                lib = usable_library(artifact, log)
                pred = CompiledPredictor(lib, nthread=artifact.model.config.nthread)
                return MaterializedScorer(pred.predict, candidates, "compiled library (tl2cgen)", "; ".join(reasons))
            except (ImportError, OirlError) as exc:
                if path == "compiled":
                    raise
                reasons.append(f"compiled library: {exc}")
        else:
            if path == "compiled":
                raise OirlError("model has no compiled library (train with --compile)", artifact.path)
            reasons.append("compiled library: none in the model directory")
    return MaterializedScorer(artifact.model.predict, candidates, "native predict", "; ".join(reasons))


# --------------------------------------------------------------------------------------
# Input


@dataclass
class Item:
    line: int
    id: object = None
    query: str | None = None
    extra: dict = field(default_factory=dict)
    error: str | None = None
    row: int = -1  # row in the --embeddings matrix


def parse_line(raw: str, line: int) -> Item:
    if not raw.strip():
        return Item(line, error="empty line")
    try:
        rec = parse_json_line(raw)
    except BadLine as exc:
        return Item(line, error=str(exc))
    if not isinstance(rec, dict):
        return Item(line, error=f"a record must be a JSON object, got {type(rec).__name__}")
    rid = rec.get("id")
    if "query" not in rec:
        return Item(line, id=rid, error="missing \"query\" field")
    q = rec["query"]
    if not isinstance(q, str):
        return Item(line, id=rid, error=f"\"query\" must be a string, got {type(q).__name__}")
    if not q.strip():  # an empty text still embeds to some vector: a confident pick for no question
        return Item(line, id=rid, error="\"query\" is empty or only whitespace")
    clash = [k for k in rec if k in RESERVED_INPUT_KEYS]
    if clash:
        return Item(line, id=rid, error=f"input field(s) {', '.join(map(repr, clash))} would be overwritten by "
                                        "the output's own field(s) of that name; rename them in the input")
    extra = {k: v for k, v in rec.items() if k not in ("id", "query")}
    return Item(line, id=rid, query=q, extra=extra)


def _iter_jsonl_items(path: Path, skip: int) -> Iterator[Item]:
    if is_stream(path):  # standard input or a FIFO: read once, as it comes
        fh = sys.stdin.buffer if is_stdio(path) else Path(path).open("rb")
        try:
            for n, raw in iter_stream_lines(fh, skip):
                yield parse_line(raw, n)
        finally:
            if not is_stdio(path):
                fh.close()
        return
    for n, raw in iter_lines(path, skip):
        yield parse_line(raw, n)


def _iter_embedding_items(ids_path: Path, skip: int) -> Iterator[Item]:
    for n, raw in iter_lines(ids_path, skip):
        yield Item(n, id=raw, query=None, row=n - 1, error=None if raw.strip() else "empty id")


def _chunks(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for it in items:
        chunk.append(it)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --------------------------------------------------------------------------------------
# Output and resume


def resume_point(out: Path) -> int:
    """Complete lines already in ``out``; cuts a partial last line.  Checks the prefix is ours."""
    if not out.exists():
        return 0
    size = out.stat().st_size
    n, last_nl = 0, -1
    with out.open("rb") as fh:
        pos = 0
        while True:
            block = fh.read(1 << 20)
            if not block:
                break
            c = block.count(b"\n")
            if c:
                n += c
                last_nl = pos + block.rindex(b"\n")
            pos += len(block)
    if last_nl + 1 != size:
        with out.open("r+b") as fh:
            fh.truncate(last_nl + 1)
    if n:
        # the last complete record must be ours and numbered n
        start = max(0, last_nl - (1 << 22))
        with out.open("rb") as fh:
            fh.seek(start)
            tail = fh.read(last_nl - start)
        last = tail.rsplit(b"\n", 1)[-1]
        try:
            rec = json.loads(last)
            ok = isinstance(rec, dict) and rec.get("line") == n
        except (json.JSONDecodeError, UnicodeDecodeError):
            ok = False
        if not ok:
            raise OirlError(
                f"cannot resume: line {n} of the output is not record number {n} of an `oirl score` run", out, n
            )
    return n


# Characters that str.splitlines() and some JSONL readers treat as line breaks. JSON allows
# them raw inside strings (the only place json.dumps can emit them), so escaping them there
# keeps one record per line for every reader.
# (json.dumps already escapes the C0 controls among them.)
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, default=str)  # json.dumps would build one a call


def _dumps(rec: dict) -> str:
    text = _ENCODER.encode(rec)
    return text if text.isascii() else text.translate(_LINE_BREAKS)  # isascii: the common case, nearly free


def _num(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _record(item: Item, cands: Candidates, idx, sc, top_k: int, full_row) -> dict:
    rec = {"line": item.line, "id": item.id}
    for k, v in item.extra.items():
        if k not in OUTPUT_KEYS:
            rec[k] = v
    b = int(idx[0])
    rec["prompt_id"] = cands.ids[b]
    rec["prompt"] = cands.texts[b]
    rec["score"] = _num(sc[0])
    if top_k > 1:
        rec["top_k"] = [{"prompt_id": cands.ids[int(i)], "score": _num(s)} for i, s in zip(idx, sc)]
    if full_row is not None:
        rec["scores"] = {pid: _num(s) for pid, s in zip(cands.ids, full_row)}
    return rec


def _error_record(item: Item) -> dict:
    return {"line": item.line, "id": item.id, "error": item.error}


# --------------------------------------------------------------------------------------
# The job


@dataclass
class ScoreSummary:
    input: str
    output: str
    lines: int = 0  # output lines after this run (resumed + new)
    resumed: int = 0  # lines found complete in the output before this run
    scored: int = 0
    errors: int = 0
    pairs: int = 0
    candidates: int = 0
    path: str = ""
    fallback_reason: str | None = None
    seconds: float = 0.0
    score_seconds: float = 0.0
    embed_seconds: float = 0.0
    read_seconds: float = 0.0  # reading and parsing input lines
    format_seconds: float = 0.0  # turning picks into JSON records
    write_seconds: float = 0.0  # writing them to the output file
    pairs_per_s: float = 0.0
    first_errors: list = field(default_factory=list)
    interrupted: bool = False
    low_confidence: int = 0  # picks whose calibrated success probability fell below --min-confidence

    def to_dict(self) -> dict:
        return asdict(self)

    def lines_text(self) -> list[str]:
        out = [
            f"{self.lines} lines in {self.output}: {self.scored} scored, {self.errors} errors"
            + (f", {self.resumed} kept from an earlier run" if self.resumed else ""),
            f"scoring path: {self.path}" + (f" (fallback: {self.fallback_reason})" if self.fallback_reason else ""),
            *([f"{self.low_confidence} picks below --min-confidence (field low_confidence)"] if self.low_confidence else []),
            f"{self.pairs} pairs over {self.candidates} candidates in {self.seconds:.1f}s "
            f"(scoring {self.score_seconds:.2f}s = {self.pairs_per_s:,.0f} pairs/s; embedding {self.embed_seconds:.1f}s; "
            f"reading {self.read_seconds:.1f}s; writing {self.format_seconds + self.write_seconds:.1f}s)",
        ]
        for e in self.first_errors:
            out.append(f"  line {e['line']}: {e['error']}")
        if self.errors > len(self.first_errors):
            out.append(f"  ... and {self.errors - len(self.first_errors)} more error records")
        return out


def _strict_check(items: Iterator[Item], where: Path, emb: np.ndarray | None) -> None:
    first_nan = None
    if emb is not None:
        for a in range(0, len(emb), 1 << 16):
            bad = np.flatnonzero(~np.isfinite(np.asarray(emb[a : a + (1 << 16)], dtype=np.float32)).all(axis=1))
            if len(bad):
                first_nan = a + int(bad[0])
                break
    for it in items:
        if it.error is None and first_nan is not None and it.row == first_nan:
            it.error = "query embedding contains NaN or infinity"
        if it.error is not None:
            raise OirlError(it.error, where, it.line)


class NpyRows:
    """Rows of a 2-D ``.npy`` file, read from disk only when asked for.

    A memory map would do the same with less code, but every page it touches stays
    in the process's resident set, so peak memory would grow with the input file;
    reading just the rows of each chunk keeps it bounded by the chunk size.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with self.path.open("rb") as fh:
            try:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            # numpy's header parser raises tokenize and syntax errors too on a damaged header
            except Exception as exc:  # noqa: BLE001
                raise ValueError(f"not a .npy header ({exc})") from None
            self.offset = fh.tell()
        if dtype.hasobject:
            raise ValueError("object arrays are not accepted (no pickle)")
        # float32 is read as is; float16 and float64 are rounded to the nearest float32 (float16
        # exactly; a float64 beyond float32's range becomes inf, so its row gets an error record);
        # integers and anything else are refused: they are not embeddings.
        if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
            raise ValueError(f"embeddings must be float32 (or float16/float64, converted to float32), got dtype {dtype}")
        if fortran and len(shape) == 2 and shape[0] > 1 and shape[1] > 1:
            raise ValueError("Fortran-ordered arrays are not supported; save with np.save(np.ascontiguousarray(a))")
        self.shape, self.dtype = tuple(shape), dtype
        self.ndim = len(shape)
        if self.ndim == 2:
            self.row_bytes = shape[1] * dtype.itemsize
            expected = self.offset + shape[0] * self.row_bytes
            if self.path.stat().st_size < expected:
                raise ValueError(f"file is truncated: {self.path.stat().st_size} bytes, the header promises {expected}")

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, start: int, stop: int) -> np.ndarray:
        with self.path.open("rb") as fh:
            fh.seek(self.offset + start * self.row_bytes)
            buf = fh.read((stop - start) * self.row_bytes)
        return np.frombuffer(buf, dtype=self.dtype).reshape(stop - start, self.shape[1])

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            return self._read(start, max(start, stop))[::step]
        rows = np.asarray(index, dtype=np.int64)
        if rows.size == 0:
            return np.empty((0, self.shape[1]), self.dtype)
        lo, hi = int(rows.min()), int(rows.max()) + 1  # a chunk's rows are consecutive
        return self._read(lo, hi)[rows - lo]


def open_input(in_path, embeddings=None, ids=None) -> tuple[Path, "NpyRows | None"]:
    """(line source, embedding rows or None): the JSONL input, or the ids file beside ``embeddings``.

    Raises OirlError for a missing, empty or mismatched input, before anything is written."""
    emb_matrix = None
    if embeddings is not None or ids is not None:
        if embeddings is None or ids is None:
            raise OirlError("--embeddings and --ids go together")
        if in_path is not None:
            raise OirlError("give either --in or --embeddings/--ids, not both")
        src = Path(ids)
        emb_path = Path(embeddings)
        if not emb_path.is_file():
            raise OirlError("embeddings file not found", emb_path)
        if not src.is_file():
            raise OirlError("ids file not found", src)
        try:
            emb_matrix = NpyRows(emb_path)
        except (ValueError, OSError) as exc:
            raise OirlError(f"not a readable .npy file ({exc})", emb_path) from None
        if emb_matrix.ndim != 2:
            raise OirlError(f"embeddings must be a 2-D array, got shape {emb_matrix.shape}", emb_path)
        n_ids = count_lines(src)
        if n_ids != len(emb_matrix):
            raise OirlError(f"{n_ids} ids but {len(emb_matrix)} embedding rows", src)
    else:
        if in_path is None:
            raise OirlError("no input: give --in queries.jsonl (or --embeddings with --ids)")
        src = Path(in_path)
        if is_stream(src):  # "-" (standard input) or a FIFO: streamed, never stat'ed for a size
            return src, None
        if src.is_dir():
            raise OirlError("input is a folder; give a JSONL file (or --engine dask for a folder of shards)", src)
        if not src.is_file():
            raise OirlError("input file not found", src)
    if src.stat().st_size == 0:
        raise OirlError("input file is empty", src)
    return src, emb_matrix


class Scoring:
    """A model loaded and ready to score lines: artifact, candidates, scorer, embedders.

    Built once per process: by ``score_file`` for a local run, and once per Dask worker
    process (``oirl_fast.distributed``), so the numba kernel compiles once per worker.
    ``write`` turns parsed input lines into output records; it is the only place the
    record format is produced, for the local stream and the distributed partitions alike.
    """

    def __init__(self, artifact, cands: Candidates, scorer: PairScorer, top_k: int, with_scores: bool,
                 min_confidence: float | None, get_embedder: Callable):
        self.artifact, self.cands, self.scorer = artifact, cands, scorer
        self.k = min(top_k, len(cands))
        self.with_scores, self.min_confidence = with_scores, min_confidence
        self.calibrator = artifact.model.calibrator
        self.get_embedder = get_embedder

    def annotate(self, rec: dict, confidence: float | None, summary: "ScoreSummary") -> dict:
        """Add the pick's calibrated success probability and, with a threshold, whether it is too low."""
        if confidence is not None and rec.get("score") is not None:
            rec["confidence"] = float(confidence)
            if self.min_confidence is not None:
                rec["low_confidence"] = rec["confidence"] < self.min_confidence
                summary.low_confidence += rec["low_confidence"]
        return rec

    def write(self, items: Iterator[Item], fh, summary: "ScoreSummary", chunk_size: int = DEFAULT_CHUNK,
              emb_matrix=None, strict: bool = False, src: Path | None = None,
              on_chunk: Callable[[int], None] | None = None, pipeline: bool = True) -> None:
        """Score ``items`` chunk by chunk and write one record a line to the binary file ``fh``.

        ``pipeline``: read and parse the next chunks in one thread and write finished ones in
        another while this thread embeds and scores, so the tokenizer, the kernel and the file
        writes (which release the GIL) overlap with the Python work; the output is the same
        bytes in the same order as the serial loop (``pipeline=False``)."""
        score = lambda chunk: _score_chunk(chunk, self.cands, self.scorer, self.k, self.with_scores, emb_matrix,
                                           self.get_embedder, summary, strict, src,
                                           lambda rec, conf: self.annotate(rec, conf, summary), self.calibrator)
        if pipeline:
            from .pipelined import run_pipeline

            run_pipeline(_chunks(items, chunk_size), score, lambda lines, n: _write_lines(fh, lines, n, summary, on_chunk),
                         summary)
            return
        chunks = _chunks(items, chunk_size)
        while True:
            t0 = time.perf_counter()
            chunk = next(chunks, None)
            summary.read_seconds += time.perf_counter() - t0
            if chunk is None:
                break
            _write_lines(fh, score(chunk), len(chunk), summary, on_chunk)


def _write_lines(fh, lines: list[str], n: int, summary: "ScoreSummary", on_chunk) -> None:
    t0 = time.perf_counter()
    # A lone surrogate can only sit inside a JSON string, where backslashreplace
    # writes it as the valid escape \udcXX, exactly what ensure_ascii would.
    fh.write("".join(lines).encode("utf-8", "backslashreplace"))
    fh.flush()
    summary.write_seconds += time.perf_counter() - t0
    if on_chunk is not None:
        on_chunk(n)


def load_scoring(
    model_dir: str | Path,
    prompts: str | Path | None = None,
    candidates: Candidates | None = None,
    query_dim: int | None = None,
    needs_text_embedder: bool = True,
    top_k: int = 1,
    with_scores: bool = False,
    min_confidence: float | None = None,
    device: str = "auto",
    batch_size: int = 128,
    precision: str = "fp32",
    cache_dir: str | Path | None = None,
    path: str = "auto",
    embedder_factory: Callable | None = None,
    embeddings_label: str | Path | None = None,
    log: Callable[[str], None] = lambda s: None,
    build_scorer: bool = True,
    embedder: str | None = None,
) -> Scoring:
    """Load the artifact, check it against the input (``query_dim`` of precomputed embeddings),
    resolve the candidates (the model's, a ``prompts`` file, or ready ``candidates``) and pick
    the fastest scorer (unless ``build_scorer`` is False: a client that only checks the job).
    Text is embedded with the embedder recorded in the artifact (``embedder``: the path of a
    moved folder encoder, checked to give the same vectors)."""
    from .train.artifact import load_artifact

    if precision not in ("fp32", "fp16"):
        raise OirlError(f"--precision must be fp32 or fp16, got {precision!r}")
    artifact = load_artifact(model_dir)
    layout = artifact.metadata.feature_layout
    qdim, pdim = int(layout["query_dim"]), int(layout["prompt_dim"])
    if query_dim is not None and query_dim != qdim:
        raise OirlError(f"embeddings have dimension {query_dim}, the model expects {qdim}", embeddings_label)

    embedders: dict[bool, object] = {}
    encoder = None
    if needs_text_embedder and embedder_factory is None:
        from .encoders import artifact_record, encoder_for_record

        # the encoder the model was trained with, refused if this machine's build would give other vectors
        where = Path(model_dir) / "metadata.json"
        encoder = encoder_for_record(artifact_record(artifact.metadata, where), cache_dir, device, batch_size, precision,
                                     override=embedder, where=where, log=log)

    def get_embedder(cached: bool):
        if cached not in embedders:
            if embedder_factory is not None:
                embedders[cached] = embedder_factory(cached=cached)
            else:
                from .embed import Embedder

                if encoder is None:
                    raise OirlError("text queries need the model's embedder")
                embedders[cached] = Embedder(cache_dir=cache_dir, progress=False, use_cache=cached, encoder=encoder)
        return embedders[cached]

    if min_confidence is not None:
        if not 0.0 <= min_confidence <= 1.0:
            raise OirlError(f"--min-confidence must be in [0, 1], got {min_confidence}")
        if artifact.model.calibrator is None:
            raise OirlError("the model has no calibrator (trained by an older oirl-fast); retrain it to use --min-confidence",
                            Path(model_dir) / "metadata.json")

    if candidates is not None:
        cands = candidates
    elif prompts is not None:
        cands = read_prompts_file(
            prompts, artifact.metadata.embedding_model, pdim,
            get_embedder if embedder_factory is not None else _candidate_embedder(artifact.path, encoder),
        )
    else:
        cands = model_candidates(artifact)
    scorer = make_scorer(artifact, cands, device=device, path=path, log=log) if build_scorer else None
    return Scoring(artifact, cands, scorer, top_k, with_scores, min_confidence, get_embedder)


def iter_range_items(src: Path, start: int, stop: int, first_line: int, embeddings: bool) -> Iterator[Item]:
    """Parsed input lines in bytes [start, stop) of ``src``, numbered from ``first_line``.

    ``start`` must be the first byte of a line; ``stop`` the byte after a newline (or the
    file size).  Lines are split and decoded exactly as ``iter_lines`` does, so a
    partition yields the same items as the whole-file stream does for those lines.
    """
    with Path(src).open("rb") as fh:
        fh.seek(start)
        pos, n = start, first_line
        while pos < stop:
            raw = fh.readline()
            if not raw:
                break
            pos += len(raw)
            text = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
            if embeddings:
                yield Item(n, id=text, query=None, row=n - 1, error=None if text.strip() else "empty id")
            else:
                yield parse_line(text, n)
            n += 1


def score_partition(scoring: Scoring, src: str | Path, start: int, stop: int, first_line: int, out: str | Path,
                    emb_matrix=None, chunk_size: int = DEFAULT_CHUNK) -> tuple["ScoreSummary", str, int]:
    """Score the lines in bytes [start, stop) of ``src`` into ``out``, written atomically.

    Returns (summary, SHA-256 of the file, its size).  Running it twice gives the same
    file, so a partition retried after a lost worker is harmless.
    """
    import hashlib

    from .atomic import atomic_path

    t0 = time.perf_counter()
    out = Path(out)
    summary = ScoreSummary(input=str(src), output=str(out), candidates=len(scoring.cands), path=scoring.scorer.path,
                           fallback_reason=scoring.scorer.reason or None)
    items = iter_range_items(Path(src), start, stop, first_line, embeddings=emb_matrix is not None)
    with atomic_path(out) as tmp:
        with tmp.open("wb") as fh:
            scoring.write(items, fh, summary, chunk_size, emb_matrix=emb_matrix, src=Path(src))
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


def score_io(model_dir, in_path, out, prompts=None, embeddings=None, ids=None, cache_dir=None,
             out_kind: str = "file") -> tuple[dict, list[Output]]:
    """The path arguments of a scoring job as ``check_paths`` takes them: (inputs, outputs).

    A file output also stands for its ``OUT.partial`` and ``OUT.partial.job.json``; a merged
    Dask output for its ``OUT.parts`` folder."""
    inputs = {"MODEL": model_dir, "--in": in_path, "--prompts": prompts, "--embeddings": embeddings, "--ids": ids,
              "--cache-dir": cache_dir}
    outputs = [Output(out, "--out", JSONL_SUFFIXES, kind=out_kind)]
    if out is not None and not is_stream(out) and out_kind == "file":
        outputs += [Output(f"{out}{PARTIAL_SUFFIX}", "--out (its .partial)", kind="file"),
                    Output(f"{out}{JOB_SUFFIX}", "--out (its .partial.job.json)", kind="file")]
    return inputs, outputs


def embedder_identity(artifact, precision: str) -> dict:
    """What turns a query text into the model's input vector, as recorded for --resume: the
    artifact's embedder record (kind, identity, weights hash) and the precision the queries are embedded in."""
    return {"embedding_model": artifact.metadata.embedding_model, "embedder": artifact.metadata.embedder_record,
            "precision": precision}


def candidates_sha256(cands: Candidates) -> str:
    import hashlib

    h = hashlib.sha256(json.dumps([cands.ids, cands.texts], ensure_ascii=False).encode("utf-8", "surrogatepass"))
    h.update(np.ascontiguousarray(cands.embeddings, dtype=np.float32).tobytes())
    return h.hexdigest()


def job_signature(scoring: "Scoring", files: Sequence[str | Path], embeddings: str | Path | None, *, top_k: int,
                  with_scores: bool, min_confidence: float | None, precision: str, path: str) -> dict:
    """Everything an output line depends on, for a resumed run to check it continues the same job:
    the input files (identity, size, modification time), the model (SHA-256 of its metadata.json,
    which holds the checksums of its other files), the candidates, the options and the embedder.
    Shared by the local stream (``OUT.partial.job.json``) and the Dask manifest."""
    from .train.artifact import file_sha256

    def stat(p) -> dict:
        st = os.stat(p)
        return {"file": str(Path(p).resolve()), "dev": st.st_dev, "ino": st.st_ino, "size": st.st_size,
                "mtime_ns": st.st_mtime_ns}

    artifact = scoring.artifact
    return {
        "model": str(Path(artifact.path).resolve()),
        "model_sha256": file_sha256(Path(artifact.path) / "metadata.json"),
        "inputs": [stat(f) for f in files],
        "embeddings": None if embeddings is None else stat(embeddings),
        "candidates_sha256": candidates_sha256(scoring.cands),
        "options": {"top_k": top_k, "with_scores": with_scores, "min_confidence": min_confidence, "path": path},
        "embedder": embedder_identity(artifact, precision),
    }


def _differences(old: dict, new: dict) -> str:
    names = {"inputs": "input file", "embeddings": "--embeddings file", "model": "model folder",
             "model_sha256": "model", "candidates_sha256": "candidate prompts", "embedder": "embedder"}
    diff = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) == new.get(k):
            continue
        if k == "options" and isinstance(old.get(k), dict):
            flags = {"with_scores": "--scores", "path": "scoring path"}
            diff += [flags.get(o, f"--{o.replace('_', '-')}") for o in sorted(set(old[k]) | set(new[k]))
                     if old[k].get(o) != new[k].get(o)]
        else:
            diff.append(names.get(k, k))
    return ", ".join(dict.fromkeys(diff)) or "format"


def _read_job(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == JOB_FORMAT else None


def _spool(src: Path) -> Path:
    """Copy standard input or a FIFO to a temporary file (for --strict, which reads the input twice)."""
    fh = sys.stdin.buffer if is_stdio(src) else Path(src).open("rb")
    fd, tmp = tempfile.mkstemp(prefix="oirl-score-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb") as dst:
            for block in iter(lambda: fh.read(1 << 20), b""):
                dst.write(block)
    finally:
        if not is_stdio(src):
            fh.close()
    return Path(tmp)


def score_file(
    model_dir: str | Path,
    in_path: str | Path | None,
    out_path: str | Path,
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
    chunk_size: int = DEFAULT_CHUNK,
    cache_dir: str | Path | None = None,
    path: str = "auto",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    embedder_factory: Callable | None = None,
    embedder: str | None = None,
    pipeline: bool = True,
) -> ScoreSummary:
    """Score ``in_path`` (JSONL queries) or ``embeddings`` + ``ids`` into ``out_path``; see the module doc.

    ``in_path`` / ``out_path`` may be ``-`` (standard input / output) or a FIFO, streamed
    through. A file output is written as ``OUT.partial`` (with ``OUT.partial.job.json``,
    the job's signature, beside it) and renamed to OUT when complete, so an existing OUT
    survives an interrupted run; ``resume`` continues the ``.partial`` of the same job.
    ``pipeline=False`` reads, scores and writes in one thread (same output bytes).
    """
    t_start = time.perf_counter()
    log = log or (lambda s: None)
    out_path = Path(out_path)
    if top_k < 1:
        raise OirlError(f"--top-k must be at least 1, got {top_k}")
    if chunk_size < 1:
        raise OirlError(f"chunk size must be at least 1, got {chunk_size}")

    # -- input and output checks that stop the run, before anything is written or loaded
    check_paths(*score_io(model_dir, in_path, out_path, prompts, embeddings, ids, cache_dir))
    src, emb_matrix = open_input(in_path, embeddings, ids)
    in_stream, out_stream = is_stream(src), is_stream(out_path)
    if resume and (in_stream or out_stream):
        raise OirlError("--resume needs a regular input file and output file (not standard input/output or a FIFO)",
                        out_path if out_stream else src)
    label = "<stdin>" if is_stdio(src) else str(src)

    scoring = load_scoring(
        model_dir, prompts=prompts, query_dim=None if emb_matrix is None else emb_matrix.shape[1],
        needs_text_embedder=emb_matrix is None or prompts is not None, top_k=top_k, with_scores=with_scores,
        min_confidence=min_confidence, device=device, batch_size=batch_size, precision=precision, cache_dir=cache_dir,
        path=path, embedder_factory=embedder_factory, embeddings_label=embeddings, log=log, embedder=embedder,
    )
    cands, scorer = scoring.cands, scoring.scorer

    spooled = None
    try:
        if strict and in_stream:
            src = spooled = _spool(src)  # --strict reads the input twice
        if strict:
            items = _iter_jsonl_items(src, 0) if emb_matrix is None else _iter_embedding_items(src, 0)
            _strict_check(items, Path(label), emb_matrix)

        partial = out_path.with_name(out_path.name + PARTIAL_SUFFIX)
        job_path = out_path.with_name(out_path.name + JOB_SUFFIX)
        skip, signature = 0, None
        if not out_stream:
            signature = {"format": JOB_FORMAT, "version": 1,
                         **job_signature(scoring, [src], embeddings, top_k=top_k, with_scores=with_scores,
                                         min_confidence=min_confidence, precision=precision, path=path)}
            old = _read_job(job_path) if job_path.exists() else None
            if partial.exists() and old is None:
                raise OirlError("exists without the job record oirl score writes beside it, so it is not ours; "
                                "remove or rename it", partial)
            if resume and partial.exists():
                if old != signature:
                    raise OirlError(f"cannot resume: {partial.name} comes from another job ({_differences(old, signature)} "
                                    "differ); run without --resume to start again", partial)
                skip = resume_point(partial)
            elif resume:
                log(f"nothing to resume ({partial.name} does not exist): scoring from the first line")
        total_lines = None if in_stream and spooled is None else count_lines(src)
        if total_lines is not None and skip > total_lines:
            raise OirlError(f"cannot resume: the output has {skip} lines, the input only {total_lines}", partial)

        summary = ScoreSummary(input=label, output="<stdout>" if is_stdio(out_path) else str(out_path), resumed=skip,
                               candidates=len(cands), path=scorer.path, fallback_reason=scorer.reason or None)
        log(f"scoring {'the' if total_lines is None else total_lines - skip} lines against {len(cands)} candidates "
            f"with the {scorer.path}" + (f"; resuming after line {skip}" if skip else ""))

        items = _iter_jsonl_items(src, skip) if emb_matrix is None else _iter_embedding_items(src, skip)
        bar = ProgressBar("scoring", None if total_lines is None else total_lines - skip, enabled=progress)

        def advance(n: int) -> None:
            summary.lines = skip + summary.scored + summary.errors
            bar.advance(n, note=f"{summary.pairs / bar.elapsed:,.0f} pairs/s")

        from .atomic import write_errors, write_text

        try:
            if is_stdio(out_path):
                with write_errors("<stdout>"), bar:
                    scoring.write(items, sys.stdout.buffer, summary, chunk_size, emb_matrix=emb_matrix, strict=strict,
                                  src=Path(label), on_chunk=advance, pipeline=pipeline)
            elif out_stream:  # a FIFO or a device: written through
                with write_errors(out_path), out_path.open("wb") as fh, bar:
                    scoring.write(items, fh, summary, chunk_size, emb_matrix=emb_matrix, strict=strict,
                                  src=Path(label), on_chunk=advance, pipeline=pipeline)
            else:
                write_text(job_path, json.dumps(signature, indent=1, ensure_ascii=False))  # before the .partial
                with write_errors(partial), partial.open("ab" if skip else "wb") as fh, bar:
                    scoring.write(items, fh, summary, chunk_size, emb_matrix=emb_matrix, strict=strict,
                                  src=Path(label), on_chunk=advance, pipeline=pipeline)
                    fh.flush()
                    os.fsync(fh.fileno())
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


def _score_chunk(chunk, cands, scorer, k, with_scores, emb_matrix, get_embedder, summary, strict, src,
                 annotate=lambda rec, conf: rec, calibrate=None) -> list[str]:
    ok = [it for it in chunk if it.error is None]
    Q = None
    if ok:
        t0 = time.perf_counter()
        if emb_matrix is None:
            Q = _embed_queries([it.query for it in ok], get_embedder)
        else:
            rows = np.asarray([it.row for it in ok], dtype=np.int64)
            with np.errstate(over="ignore"):  # a float64 beyond float32's range: inf, an error record below
                Q = np.asarray(emb_matrix[rows], dtype=np.float32)
        bad = ~np.isfinite(Q).all(axis=1)
        if bad.any():
            for i in np.flatnonzero(bad):
                ok[i].error = "query embedding contains NaN or infinity"
                if strict:
                    raise OirlError(ok[i].error, src, ok[i].line)
            keep = ~bad
            Q = Q[keep]
            ok = [it for it, kk in zip(ok, keep) if kk]
        summary.embed_seconds += time.perf_counter() - t0
    results = {}
    if ok:
        t0 = time.perf_counter()
        full = None
        if with_scores:
            full = scorer.all(Q)
            idx, sc = _top_k(full, k)
        else:
            idx, sc = scorer.top(Q, k)
        summary.score_seconds += time.perf_counter() - t0
        summary.pairs += len(ok) * len(cands)
        # one vectorized call per chunk: calibrating pick by pick cost more than scoring
        conf = calibrate(sc[:, 0]) if calibrate is not None else None
        for j, it in enumerate(ok):
            results[it.line] = (idx[j], sc[j], None if full is None else full[j], None if conf is None else conf[j])
    t_format = time.perf_counter()
    lines = []
    for it in chunk:
        if it.error is not None:
            summary.errors += 1
            if len(summary.first_errors) < 5:
                summary.first_errors.append({"line": it.line, "error": it.error})
            lines.append(_dumps(_error_record(it)) + "\n")
        else:
            i, s, f, c = results[it.line]
            summary.scored += 1
            lines.append(_dumps(annotate(_record(it, cands, i, s, k, f), c)) + "\n")
    summary.format_seconds += time.perf_counter() - t_format
    return lines


def _candidate_embedder(model_dir: Path, encoder):
    """Candidate prompts are embedded once and cached beside the model (``MODEL_DIR/embeddings/``,
    keyed by encoder and text hash); a read-only model folder falls back to the user cache."""
    from .embed import Embedder

    def factory(cached: bool = True):
        if encoder is None:
            raise OirlError("prompts without embeddings need the model's embedder")
        root = model_dir if os.access(model_dir, os.W_OK) else None
        return Embedder(cache_dir=root, progress=False, encoder=encoder)

    return factory


def _embed_queries(texts: list[str], get_embedder) -> np.ndarray:
    """Queries already in the embedding cache come from it; the others are embedded without
    being added (a stream of queries would grow the cache without end).

    The static embedder skips the cache: it embeds about 10,000 texts a second, faster than
    hashing the texts and reading their rows back from disk."""
    from .embed import text_key

    plain = get_embedder(False)
    if getattr(getattr(plain, "encoder", None), "kind", None) == "static":
        return plain.embed(texts)
    cache = getattr(get_embedder(True), "cache", None)
    if cache is None:
        return plain.embed(texts)
    found, vectors = cache.lookup([text_key(t) for t in texts])
    if found.all():
        return vectors
    fresh = plain.embed([t for t, f in zip(texts, found) if not f])
    out = np.empty((len(texts), fresh.shape[1]), dtype=np.float32)
    out[~found] = fresh
    if found.any():
        out[found] = vectors
    return out
