"""Scoring routes: the factorized kernel, or a fallback on materialized [query | prompt] pairs."""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import OirlError
from ..features import grid_features
from ..kernels.quickscorer import FactorizedScorer, UnsupportedModel
from ..train.artifact import usable_library
from ..train.compile import CompiledPredictor
from .candidates import Candidates

# Materialized fallback routes build at most this many pair rows at a time.
FALLBACK_PAIRS = 1 << 16


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
        try:
            kdev = resolve_kernel_device(device)
            if kdev == "cuda":
                from ..kernels.cuda import CudaFactorizedScorer

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
