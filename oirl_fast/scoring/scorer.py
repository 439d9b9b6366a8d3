"""``Scorer``: every (query, candidate) pair's reward-model score, through the fastest route that runs the model.

Routes, best first:

* ``"kernel"``: the factorized QuickScorer kernel (numba, CPU or CUDA); it never builds the
  (query, prompt) pairs, the prompt side of every tree is evaluated once per candidate set;
* ``"compiled"``: the model's tl2cgen library on materialized [query ‖ prompt] rows;
* ``"native"``: the booster's own ``predict`` on those rows.

``route="auto"`` takes the first that can run the model and records why the others could not
(``fallback_reason``).  The local stream, the Dask partitions, ``oirl tradeoff`` and the
Python API all score through this class.  Building a Scorer never writes to the model folder
(a compiled library that does not fit this machine is rebuilt in the user cache).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import OirlError
from ..features import grid_features
from ..kernels.forest_file import load_forest
from ..kernels.quickscorer import FactorizedScorer, UnsupportedModel
from ..train.artifact import verified_library
from ..train.compile import CompiledPredictor
from ..train.model_format import MODEL_FILES
from .candidates import Candidates, model_candidates

ROUTES = ("kernel", "compiled", "native")
# Materialized routes build at most this many pair rows at a time.
FALLBACK_PAIRS = 1 << 16


def resolve_kernel_device(device: str) -> str:
    """``auto`` -> ``cuda`` when numba sees a CUDA GPU, else ``cpu``."""
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


def top_k(full: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(int64 (n, k) column indices best first, (n, k) values) of ``full`` (n, P); ties to the lower index."""
    k = max(1, min(k, full.shape[1]))
    # stable sort on -score: ties go to the lower prompt index, like the kernel
    idx = np.argsort(-full, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(full, idx, axis=1)


class Scorer:
    """Scores of one reward model for a fixed candidate set.

    ``scores(Q)``: float32 (n, P), every candidate's probability of a correct answer for each
    query embedding of ``Q`` float32 (n, d).  ``top(Q, k)``: (int64 (n, k) candidate indices
    best first, float32 (n, k) scores); ties go to the lower candidate index on every route.
    ``dtype=np.float64`` returns the scores at the precision the routes compute them in (what
    ``oirl score`` writes).  Build one with :meth:`for_artifact` (or :meth:`for_model` for a
    model held in memory).
    """

    def __init__(self, candidates: Candidates, route: str, description: str, fallback_reason: str | None = None, *,
                 kernel: FactorizedScorer | None = None, predict: Callable[[np.ndarray], np.ndarray] | None = None,
                 query_dim: int):
        if route not in ROUTES:
            raise OirlError(f"unknown scoring route {route!r}; use one of {', '.join(ROUTES)}")
        if (kernel is None) == (route == "kernel") or (predict is None) == (route != "kernel"):
            raise ValueError("the kernel route takes a kernel, the others a predict function")
        self.candidates, self.route, self.description = candidates, route, description
        self.fallback_reason = fallback_reason or None
        self.query_dim = int(query_dim)
        self._kernel, self._predict = kernel, predict
        self._prompts = kernel.prepare(candidates.embeddings) if kernel is not None else None
        self._prompt_rows = np.ascontiguousarray(candidates.embeddings, dtype=np.float32)

    # -- constructors ------------------------------------------------------------------
    @classmethod
    def for_artifact(cls, artifact, candidates: Candidates | None = None, *, route: str = "auto",
                     device: str = "auto", log: Callable[[str], None] | None = None) -> "Scorer":
        """The fastest route that can score ``artifact``'s model (``route`` forces one).

        ``candidates``: None scores the model's own prompt set."""
        candidates = model_candidates(artifact) if candidates is None else candidates
        layout = artifact.metadata.feature_layout
        qdim, pdim = int(layout["query_dim"]), int(layout["prompt_dim"])
        model_file = artifact.path / MODEL_FILES[artifact.model.backend]

        def kernel():
            if layout.get("kind", "concat") != "concat":
                raise UnsupportedModel(f"feature layout {layout.get('kind')!r} is not a plain concatenation")
            if artifact.forest_path is not None:  # read from the artifact: no treelite needed
                return _kernel_class(device)(load_forest(artifact.forest_path), qdim, pdim)
            return _kernel_class(device).from_file(model_file, artifact.model.backend, qdim, pdim)

        def compiled():
            if artifact.compiled_library is None:
                raise OirlError("model has no compiled library (train with --compile)", artifact.path)
            lib, sha = verified_library(artifact, log or (lambda s: None))
            return CompiledPredictor(lib, nthread=artifact.model.config.nthread, sha256=sha).predict

        return cls._pick(candidates, route, device, qdim, kernel, compiled, artifact.model.predict, artifact.path)

    @classmethod
    def for_model(cls, model, query_dim: int, candidates: Candidates, *, route: str = "auto",
                  device: str = "auto") -> "Scorer":
        """A Scorer for a fitted :class:`~oirl_fast.train.reward_model.RewardModel` held in memory
        (no compiled library: the kernel, else native predict)."""
        prompt_dim = candidates.embeddings.shape[1]

        def compiled():
            raise OirlError("a model held in memory has no compiled library")

        return cls._pick(candidates, route, device, query_dim,
                         lambda: _kernel_class(device).from_booster(model.booster, query_dim, prompt_dim),
                         compiled, model.predict, None)

    @classmethod
    def _pick(cls, candidates, route, device, query_dim, kernel, compiled, native, where) -> "Scorer":
        if route not in ("auto", *ROUTES):
            raise OirlError(f"unknown scoring route {route!r}; use auto, {', '.join(ROUTES)}")
        reasons = []
        if route in ("auto", "kernel"):
            kdev = resolve_kernel_device(device)
            try:
                return cls(candidates, "kernel", f"kernel ({'numba CUDA' if kdev == 'cuda' else 'numba CPU'})",
                           kernel=kernel(), query_dim=query_dim)
            except UnsupportedModel as exc:
                if route == "kernel":
                    raise OirlError(f"the kernel cannot score this model: {exc}", where) from None
                reasons.append(f"kernel: {exc}")
        if route in ("auto", "compiled"):
            try:
                return cls(candidates, "compiled", "compiled library (tl2cgen)", "; ".join(reasons),
                           predict=compiled(), query_dim=query_dim)
            except (ImportError, OirlError) as exc:
                if route == "compiled":
                    raise
                reasons.append(f"compiled library: {exc.message if isinstance(exc, OirlError) else exc}")
        return cls(candidates, "native", "native predict", "; ".join(reasons), predict=native, query_dim=query_dim)

    # -- scoring ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.candidates)

    def scores(self, query_emb: np.ndarray, *, dtype=np.float32) -> np.ndarray:
        """(n, P) scores of every candidate for every query; ``query_emb`` float32 (n, d)."""
        if self._kernel is not None:
            full = self._kernel.score(query_emb, self._prompts)
        else:
            full = self._materialized(query_emb)
        return full.astype(dtype, copy=False)

    def top(self, query_emb: np.ndarray, k: int, *, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        """(int64 (n, k) candidate indices best first, (n, k) scores); k is capped at the candidate count."""
        if self._kernel is not None:
            idx, sc = self._kernel.best_of_n(query_emb, self._prompts, top_k=k)
        else:
            idx, sc = top_k(self._materialized(query_emb), k)
        return idx, sc.astype(dtype, copy=False)

    def _materialized(self, Q: np.ndarray) -> np.ndarray:
        """float64 (n, P): ``predict`` on [query ‖ prompt] rows, built in bounded batches."""
        Q = np.ascontiguousarray(Q, dtype=np.float32)
        if Q.ndim != 2 or Q.shape[1] != self.query_dim:
            raise OirlError(f"query embeddings must have shape (n, {self.query_dim}), got {Q.shape}")
        if np.isnan(Q).any():
            raise OirlError("query embeddings contain NaN")
        P = self._prompt_rows
        out = np.empty((len(Q), len(P)), dtype=np.float64)
        step = max(1, FALLBACK_PAIRS // max(1, len(P)))
        for a in range(0, len(Q), step):
            q = Q[a : a + step]
            out[a : a + len(q)] = np.asarray(self._predict(grid_features(q, P)), dtype=np.float64).reshape(len(q), len(P))
        return out


def _kernel_class(device: str):
    if resolve_kernel_device(device) == "cuda":
        # here, not at the top: it imports numba.cuda, only where a GPU is used
        from ..kernels.cuda import CudaFactorizedScorer

        return CudaFactorizedScorer
    return FactorizedScorer
