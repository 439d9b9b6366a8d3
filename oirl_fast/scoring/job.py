"""A model loaded and ready to score lines (``Scoring``), shared by the local stream and the Dask workers,
and the job signature a resumed run is checked against."""
from __future__ import annotations

import json
import os
import time
from dataclasses import fields
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..embed import ZERO_VECTOR, Embedder, text_key, zero_rows
from ..encoders import artifact_record, encoder_for_record
from ..errors import OirlError
from ..paths import is_stdio, is_stream
from ..pipelined import run_pipeline
from ..reranking.fallback import apply_rule, resolve_rule
from ..train.artifact import file_sha256, load_artifact
from .candidates import Candidates, candidates_sha256, model_candidates, read_prompts_file
from .options import ScoreOptions
from .records import Item, chunks, dumps, error_record, record
from .scorer import Scorer, top_k
from .summary import ScoreSummary

JOB_FORMAT = "oirl-score-job"
DONE_FORMAT = "oirl-score-done"
DONE_SUFFIX = ".job.json"  # OUT.job.json: the job that wrote the finished OUT, for --resume to recognise it


class Scoring:
    """A model loaded and ready to score lines: artifact, candidates, scorer, embedders.

    Built once per process: by ``score_file`` for a local run, and once per Dask worker
    process (:mod:`oirl_fast.scoring.dask`), so the numba kernel compiles once per worker.
    ``write`` turns parsed input lines into output records; it is the only place the
    record format is produced, for the local stream and the distributed partitions alike.
    """

    def __init__(self, artifact, cands: Candidates, scorer: Scorer | None, options: ScoreOptions,
                 get_embedder: Callable):
        self.artifact, self.cands, self.scorer, self.options = artifact, cands, scorer, options
        self.k = options.top_k
        self.calibrator = artifact.model.calibrator
        self.get_embedder = get_embedder
        self.fallback = resolve_rule(artifact.metadata.fallback, cands.ids, cands.texts, artifact.metadata.prompts,
                                     artifact.neighbours)

    def annotate(self, rec: dict, confidence: float | None, summary: "ScoreSummary") -> dict:
        """Add the pick's calibrated success probability and, with a threshold, whether it is too low."""
        if confidence is not None and rec.get("score") is not None:
            rec["confidence"] = float(confidence)
            if self.options.min_confidence is not None:
                rec["low_confidence"] = rec["confidence"] < self.options.min_confidence
                summary.low_confidence += rec["low_confidence"]
        return rec

    def write(self, items: Iterator[Item], fh, summary: "ScoreSummary", emb_matrix=None, src: Path | None = None,
              on_chunk: Callable[[int], None] | None = None, pipeline: bool = True) -> None:
        """Score ``items`` chunk by chunk (``options.chunk_size`` lines) and write one record a line
        to the binary file ``fh``; with ``options.strict`` a non-finite query embedding stops the run.

        ``pipeline``: write finished chunks in a thread of their own while this thread reads,
        embeds and scores the next one (:mod:`oirl_fast.pipelined` says why reading stays here);
        the output is the same bytes in the same order as the serial loop (``pipeline=False``)."""
        chunk_size = self.options.chunk_size
        score = lambda chunk: _score_chunk(chunk, self.cands, self.scorer, self.k, self.options.with_scores, emb_matrix,
                                           self.get_embedder, summary, self.options.strict, src,
                                           lambda rec, conf: self.annotate(rec, conf, summary), self.calibrator,
                                           self.fallback)
        if pipeline:
            run_pipeline(chunks(items, chunk_size), score, lambda lines, n: _write_lines(fh, lines, n, summary, on_chunk),
                         summary)
            return
        pending = chunks(items, chunk_size)
        while True:
            t0 = time.perf_counter()
            chunk = next(pending, None)
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
    options: ScoreOptions,
    prompts: str | Path | None = None,
    candidates: Candidates | None = None,
    query_dim: int | None = None,
    needs_text_embedder: bool = True,
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
    o = options
    artifact = load_artifact(model_dir)
    layout = artifact.metadata.feature_layout
    qdim, pdim = int(layout["query_dim"]), int(layout["prompt_dim"])
    if query_dim is not None and query_dim != qdim:
        raise OirlError(f"embeddings have dimension {query_dim}, the model expects {qdim}", embeddings_label)

    embedders: dict[bool, object] = {}
    encoder = None
    if needs_text_embedder and embedder_factory is None:
        # the encoder the model was trained with, refused if this machine's build would give other vectors
        where = Path(model_dir) / "metadata.json"
        encoder = encoder_for_record(artifact_record(artifact.metadata, where), o.cache_dir, o.device, o.batch_size, o.precision,
                                     override=embedder, where=where, log=log)

    def get_embedder(cached: bool):
        if cached not in embedders:
            if embedder_factory is not None:
                embedders[cached] = embedder_factory(cached=cached)
            else:
                if encoder is None:
                    raise OirlError("text queries need the model's embedder")
                embedders[cached] = Embedder(cache_dir=o.cache_dir, progress=False, use_cache=cached, encoder=encoder)
        return embedders[cached]

    if o.min_confidence is not None and artifact.model.calibrator is None:
        raise OirlError("the model has no calibrator (trained by an older oirl-fast); retrain it to use --min-confidence",
                        Path(model_dir) / "metadata.json")

    if candidates is not None:
        cands = candidates
    elif prompts is not None:
        cands = read_prompts_file(
            prompts, artifact.metadata.embedding_model, pdim,
            get_embedder if embedder_factory is not None else _candidate_embedder(o.cache_dir, encoder),
        )
    else:
        cands = model_candidates(artifact)
    if o.top_k > len(cands):  # the API's rule too: refused, never cut silently
        raise OirlError(f"--top-k {o.top_k} is more than the {len(cands)} candidate prompts; give at most "
                        f"{len(cands)}", prompts)
    scorer = Scorer.for_artifact(artifact, cands, route=o.route, device=o.device, log=log) if build_scorer else None
    return Scoring(artifact, cands, scorer, o, get_embedder)


def _score_chunk(chunk, cands, scorer, k, with_scores, emb_matrix, get_embedder, summary, strict, src,
                 annotate=lambda rec, conf: rec, calibrate=None, fallback=None) -> list[str]:
    ok = [it for it in chunk if it.error is None]
    if ok:
        t0 = time.perf_counter()
        if emb_matrix is None:
            Q = _embed_queries([it.query for it in ok], get_embedder)
        else:
            rows = np.asarray([it.row for it in ok], dtype=np.int64)
            with np.errstate(over="ignore"):  # a float64 beyond float32's range: inf, an error record below
                Q = np.asarray(emb_matrix[rows], dtype=np.float32)
        bad = ~np.isfinite(Q).all(axis=1)
        empty = zero_rows(Q) if emb_matrix is None else np.zeros(len(ok), bool)
        bad |= empty
        if bad.any():
            for i in np.flatnonzero(bad):
                ok[i].error = f"\"query\" {ZERO_VECTOR}" if empty[i] else "query embedding contains NaN or infinity"
                if strict:
                    raise OirlError(ok[i].error, src, ok[i].line)
            keep = ~bad
            Q = Q[keep]
            ok = [it for it, kk in zip(ok, keep) if kk]
        summary.embed_seconds += time.perf_counter() - t0
    results = {}
    if ok:
        t0 = time.perf_counter()
        # float64: the precision the routes compute in, and what the records print
        if with_scores:
            full = scorer.scores(Q, dtype=np.float64)
            idx, sc = top_k(full, k)
        else:
            full = None
            idx, sc = scorer.top(Q, k, dtype=np.float64)
        if fallback is not None:  # the model's abstention rule (metadata.fallback), one step on the top-k
            idx, sc = apply_rule(fallback, idx, sc, Q, full if full is not None else scorer.scores(Q, dtype=np.float64))
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
            lines.append(dumps(error_record(it)) + "\n")
        else:
            i, s, f, c = results[it.line]
            summary.scored += 1
            lines.append(dumps(annotate(record(it, cands, i, s, k, f), c)) + "\n")
    summary.format_seconds += time.perf_counter() - t_format
    return lines


def _candidate_embedder(cache_dir: str | Path | None, encoder):
    """Candidate prompts are embedded once and kept in the embedding cache (keyed by encoder and
    text hash), never in the model folder, which scoring does not write to."""
    def factory(cached: bool = True):
        if encoder is None:
            raise OirlError("prompts without embeddings need the model's embedder")
        return Embedder(cache_dir=cache_dir, progress=False, encoder=encoder)

    return factory


def _embed_queries(texts: list[str], get_embedder) -> np.ndarray:
    """Queries already in the embedding cache come from it; the others are embedded without
    being added (a stream of queries would grow the cache without end).

    The static embedder skips the cache: it embeds about 10,000 texts a second, faster than
    hashing the texts and reading their rows back from disk."""
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


def embedder_identity(artifact) -> dict:
    """What turns a query text into the model's input vector, as recorded for --resume: the
    artifact's embedder record (kind, identity, weights hash); the precision is among the options."""
    return {"embedding_model": artifact.metadata.embedding_model, "embedder": artifact.metadata.embedder_record}


def job_signature(scoring: "Scoring", files: Sequence[str | Path], embeddings: str | Path | None) -> dict:
    """Everything an output line depends on, for a resumed run to check it continues the same job:
    the input files (identity, size, modification time), the model (SHA-256 of its metadata.json,
    which holds the checksums of its other files), the candidates, the options and the embedder.
    Shared by the local stream (``OUT.partial.job.json``) and the Dask manifest."""
    def stat(p) -> dict:
        if is_stream(p):  # standard input or a FIFO: nothing to stat (and --resume refuses streams)
            return {"file": "<stdin>" if is_stdio(p) else str(p), "stream": True}
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
        "options": scoring.options.signature(),
        "embedder": embedder_identity(artifact),
    }


def differences(old: dict, new: dict) -> str:
    names = {"inputs": "input file", "embeddings": "--embeddings file", "model": "model folder",
             "model_sha256": "model", "candidates_sha256": "candidate prompts", "embedder": "embedder"}
    diff = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) == new.get(k):
            continue
        if k == "options" and isinstance(old.get(k), dict):
            flags = {f.name: f.metadata["cli"] for f in fields(ScoreOptions)}
            diff += [flags.get(o, o) for o in sorted(set(old[k]) | set(new[k])) if old[k].get(o) != new[k].get(o)]
        else:
            diff.append(names.get(k, k))
    return ", ".join(dict.fromkeys(diff)) or "format"


def read_job(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == JOB_FORMAT else None


def done_path(out: Path) -> Path:
    return out.with_name(out.name + DONE_SUFFIX)


def _out_stat(path: Path) -> dict:
    st = os.stat(path)
    return {"dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def write_done(out: Path, job: dict, written: Path) -> None:
    """Record beside ``out`` that the file ``written`` (about to be renamed onto ``out``: a rename keeps
    inode, size and modification time) is the finished output of ``job`` (a :func:`job_signature`)."""
    from ..atomic import write_text

    record = {"format": DONE_FORMAT, "job": job, "output": _out_stat(written)}
    # ASCII: a file name that is not valid UTF-8 is kept as its escape, never an encoding error
    write_text(done_path(out), json.dumps(record, indent=1, ensure_ascii=True))


def finished_by(out: Path, job: dict) -> tuple[bool, str]:
    """(is ``out`` the finished output of ``job``, and if not, why not) from ``OUT.job.json``."""
    try:
        record = json.loads(done_path(out).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or record.get("format") != DONE_FORMAT or not isinstance(record.get("job"), dict):
        return False, "no record of the job that wrote it"
    if record.get("output") != _out_stat(out):
        return False, "it was changed after that job wrote it"
    if record["job"] != job:
        return False, f"{differences(record['job'], job)} differ"
    return True, ""
