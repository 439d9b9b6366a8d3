"""A model loaded and ready to score (``Scoring``): what the local stream, the Dask partitions and
``Model.pick`` all run.

One chunk goes through three steps, each a method with one job:

* :meth:`Scoring.embed` turns the chunk's queries into vectors (or reads their rows of ``--embeddings``);
* :meth:`Scoring.pick` scores every (query, candidate) pair and takes the top k, then applies the
  model's pick policy (today the abstention rule of ``metadata.fallback``; the one place to add another);
* :meth:`Scoring.score_chunk` formats the records and counts what happened (:class:`ChunkStats`).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..cluster import set_threads
from ..embed import ZERO_VECTOR, Embedder, text_key, zero_rows
from ..encoders import EncoderSettings, artifact_record, encoder_for_record
from ..errors import OirlError
from ..reranking.fallback import apply_rule, resolve_rule
from ..train.artifact import load_artifact
from .candidates import Candidates, model_candidates, read_prompts_file
from .options import ScoreOptions
from .records import Item, Picked, candidate_json, dumps, error_record, iter_range_items, pick_line, record
from .scorer import Scorer, top_k
from .summary import FIRST_ERRORS, ChunkStats


class Scoring:
    """A model loaded and ready to score: artifact, candidates, scorer, embedders, options.

    Built once per process: by the local runner, once per Dask worker process (so the numba
    kernel compiles once per worker), and by :class:`oirl_fast.api.Model` on its first pick.
    ``rows``: the ``--embeddings`` rows (:class:`~oirl_fast.scoring.inputs.NpyRows`) when the
    queries come as vectors; ``where``: the input's name for the errors ``--strict`` raises.
    """

    def __init__(self, artifact, cands: Candidates, scorer: Scorer | None, options: ScoreOptions,
                 get_embedder: Callable, rows=None, encoder=None):
        self.artifact, self.cands, self.scorer, self.options = artifact, cands, scorer, options
        self.get_embedder, self.rows, self._encoder = get_embedder, rows, encoder
        self._cand_json = candidate_json(cands)
        self.calibrator = artifact.model.calibrator
        self.fallback = resolve_rule(artifact.metadata.fallback, cands.ids, cands.texts, artifact.metadata.prompts,
                                     artifact.neighbours)
        self.where: Path | None = None

    def use_threads(self, n: int) -> None:
        """Embed and score on ``n`` threads (numba's kernel and the static embedder's pooling). Starts
        numba's thread pool: a process forks its workers before this (:mod:`oirl_fast.scoring.forked`)."""
        set_threads(n)
        if self.rows is None and self._encoder is not None:
            set_encoder_threads(self._encoder, n)

    def range_items(self, src: Path, start: int, stop: int, first_line: int):
        """The items of input bytes [start, stop) of ``src`` (whole lines, the first numbered ``first_line``),
        read under this job's options: what a Dask partition and a forked worker score."""
        o = self.options
        return iter_range_items(Path(src), start, stop, first_line, embeddings=self.rows is not None,
                                max_line_bytes=o.max_line_bytes, fields=o.row_fields)

    # -- the steps ---------------------------------------------------------------------
    def embed(self, items: Sequence[Item]) -> np.ndarray:
        """float32 (n, d) query vectors of ``items``; a row that cannot be scored (NaN, or an empty
        text's zero vector) gets its item's ``error`` set (the caller drops those rows)."""
        if self.rows is None:
            Q = embed_queries([it.query for it in items], self.get_embedder)
            empty = zero_rows(Q)
        else:
            index = np.asarray([it.row for it in items], dtype=np.int64)
            with np.errstate(over="ignore"):  # a float64 beyond float32's range: inf, an error record below
                Q = np.asarray(self.rows[index], dtype=np.float32)
            empty = np.zeros(len(items), bool)
        bad = ~np.isfinite(Q).all(axis=1) | empty
        for i in np.flatnonzero(bad):
            items[i].error = f"\"query\" {ZERO_VECTOR}" if empty[i] else "query embedding contains NaN or infinity"
        return Q

    def pick(self, Q: np.ndarray, k: int | None = None, dtype=np.float64, policy: bool = True) -> Picked:
        """The ``k`` (default ``options.top_k``) best candidates of each query embedding of ``Q``
        float32 (n, d), at ``dtype`` (float64: the precision the routes compute in, and what the
        records print); ``policy``: apply the model's pick policy (its abstention rule)."""
        k = self.options.top_k if k is None else k
        rule = self.fallback if policy else None
        # the rule reads scores beyond the top k (the fixed prompt's, the vote's target's): one full grid then,
        # its top k taken from it, rather than a top-k pass and a second full pass
        if self.options.with_scores or rule is not None:
            full = self.scorer.scores(Q, dtype=dtype)
            idx, sc = top_k(full, k)
        else:
            full = None
            idx, sc = self.scorer.top(Q, k, dtype=dtype)
        if rule is not None:  # the model's abstention rule (metadata.fallback) on the top-k
            idx, sc = apply_rule(rule, idx, sc, Q, full)
        return Picked(idx.astype(np.int64, copy=False), sc, full if self.options.with_scores else None)

    def score_chunk(self, items: list[Item]) -> tuple[list[str], ChunkStats]:
        """(one output line per item, in order; what happened). With ``options.strict`` the first
        item that cannot be scored raises OirlError naming the input and its line."""
        stats = ChunkStats()
        ok = [it for it in items if it.error is None]
        if self.options.strict:  # only the lines before the first bad one can fail first
            first = next((it for it in items if it.error is not None), None)
            if first is not None:
                ok = [it for it in ok if it.line < first.line]
        picked = None
        if ok:
            t0 = time.perf_counter()
            Q = self.embed(ok)
            keep = np.asarray([it.error is None for it in ok])
            if not keep.all():
                Q, ok = Q[keep], [it for it in ok if it.error is None]
            stats.embed_seconds = time.perf_counter() - t0
        if self.options.strict:
            first = next((it for it in items if it.error is not None), None)
            if first is not None:
                raise OirlError(first.error, self.where, first.line)
        if ok:
            t0 = time.perf_counter()
            picked = self.pick(Q)
            if self.calibrator is not None:  # one vectorized call per chunk: pick by pick cost more than scoring
                picked.confidence = self.calibrator(picked.scores[:, 0])
            stats.score_seconds = time.perf_counter() - t0
            stats.pairs = len(ok) * len(self.cands)
        t0 = time.perf_counter()
        lines = self._format(items, ok, picked, stats)
        stats.format_seconds = time.perf_counter() - t0
        return lines, stats

    def _format(self, items: list[Item], ok: list[Item], picked: Picked | None, stats: ChunkStats) -> list[str]:
        row = {id(it): j for j, it in enumerate(ok)}
        o = self.options
        lines = []
        for it in items:
            j = row.get(id(it))
            if j is None:
                stats.errors += 1
                if len(stats.first_errors) < FIRST_ERRORS:
                    stats.first_errors.append({"line": it.line, "error": it.error})
                lines.append(dumps(error_record(it, o.output_field)) + "\n")
                continue
            stats.scored += 1
            line = pick_line(it, self._cand_json, picked, j, o)
            lines.append((dumps(record(it, self.cands, picked, j, o)) if line is None else line) + "\n")
        if picked is not None and picked.confidence is not None and o.min_confidence is not None:
            top = picked.scores[:, 0]
            stats.low_confidence += int(((picked.confidence < o.min_confidence) & np.isfinite(top)).sum())
        return lines


def load_scoring(model_dir: str | Path, options: ScoreOptions, *, candidates: Candidates | str | Path | None = None,
                 rows=None, embedder_factory: Callable | None = None, embedder: str | None = None,
                 log: Callable[[str], None] = lambda s: None, build_scorer: bool = True) -> Scoring:
    """Load the artifact, check it against the input and build a :class:`Scoring`.

    ``candidates``: None for the model's own prompts, a prompts file (JSONL of ``{"id", "text"}``), or
    ready :class:`Candidates`. ``rows``: the ``--embeddings`` rows (``.shape`` (n, d), checked against the
    model; ``.path`` names them in errors), or None for text queries, embedded with the embedder recorded
    in the artifact (``embedder``: the path of a moved folder encoder, checked to give the same vectors;
    ``embedder_factory(cached=bool)``: another embedder, for tests). ``build_scorer=False``: a client
    that only checks the job."""
    o = options
    artifact = load_artifact(model_dir)
    layout = artifact.metadata.feature_layout
    qdim, pdim = int(layout["query_dim"]), int(layout["prompt_dim"])
    if rows is not None and rows.shape[1] != qdim:
        raise OirlError(f"embeddings have dimension {rows.shape[1]}, the model expects {qdim}", getattr(rows, "path", None))
    prompts = candidates if isinstance(candidates, (str, Path)) else None

    embedders: dict[bool, object] = {}
    encoder = None
    if embedder_factory is None and (rows is None or prompts is not None):
        # the encoder the model was trained with, refused if this machine's build would give other vectors
        where = Path(model_dir) / "metadata.json"
        settings = EncoderSettings(o.cache_dir, o.device, o.batch_size, o.precision)
        encoder = encoder_for_record(artifact_record(artifact.metadata, where), settings, override=embedder, where=where,
                                     log=log, stored=artifact.embedder_folder)
        set_encoder_threads(encoder, o.threads)

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

    if isinstance(candidates, Candidates):
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
    return Scoring(artifact, cands, scorer, o, get_embedder, rows=rows, encoder=encoder)


def set_encoder_threads(encoder, threads: int | None) -> None:
    """Give the embedder its thread count (``--threads``), where it takes one: the static embedder sums
    and pools on that many threads (its ``threads`` attribute); transformer embedders use torch's."""
    if threads and hasattr(encoder, "threads"):
        encoder.threads = threads


def _candidate_embedder(cache_dir: str | Path | None, encoder):
    """Candidate prompts are embedded once and kept in the embedding cache (keyed by encoder and
    text hash), never in the model folder, which scoring does not write to."""
    def factory(cached: bool = True):
        if encoder is None:
            raise OirlError("prompts without embeddings need the model's embedder")
        return Embedder(cache_dir=cache_dir, progress=False, encoder=encoder)

    return factory


def embed_queries(texts: list[str], get_embedder) -> np.ndarray:
    """float32 (n, d): queries already in the embedding cache come from it; the others are embedded
    without being added (a stream of queries would grow the cache without end).

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
