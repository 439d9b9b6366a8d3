"""The factorized QuickScorer on a CUDA GPU (numba.cuda).

Same model preparation as :class:`~oirl_fast.kernels.quickscorer.FactorizedScorer`
(the CPU scorer is reused for the tree split and the prompt masks); three kernels:

1. ``_qmasks``  one thread per (query, tree): AND of the false query-node masks -> ``M[q, t]``.
2. ``_pairs``   one thread per (query, prompt): margin = base + prompt constant
   + sum over trees of ``leaf[t, lowest_bit(M[q, t] & Mp[t, p])]``.
3. ``_topk``    one thread per query: arg-max / top-k (k <= MAX_K) on the device, so only
   winners are copied back.  ``score()`` copies the whole (Q, P) matrix instead.

Runs under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) for tests.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .quickscorer import FactorizedScorer, ForestDescription, PromptSet, UnsupportedModel  # noqa: F401

MAX_K = 16
_BLOCK = 128


@cuda.jit(device=True, inline=True)
def _lowest_bit(x):
    # index of the lowest set bit: popcount of the bits below it (64 for x == 0)
    return cuda.popc((x & (~x + np.uint64(1))) - np.uint64(1))


@cuda.jit
def _qmasks(Xq, qptr, qfeat, qthr, qmask, M):
    i = cuda.grid(1)
    Tq = M.shape[1]
    if i >= Xq.shape[0] * Tq:
        return
    q = i // Tq
    t = i - q * Tq
    acc = np.uint64(0xFFFFFFFFFFFFFFFF)
    for n in range(qptr[t], qptr[t + 1]):
        if not Xq[q, qfeat[n]] < qthr[n]:
            acc &= qmask[n]
    M[q, t] = acc


@cuda.jit
def _pairs(M, n_mixed, leaves, Mp, pconst, base, S):
    i = cuda.grid(1)
    P = S.shape[1]
    if i >= S.shape[0] * P:
        return
    q = i // P
    p = i - q * P
    s = base + pconst[p]
    for t in range(n_mixed):
        s += leaves[t, _lowest_bit(M[q, t] & Mp[t, p])]
    for t in range(n_mixed, M.shape[1]):
        s += leaves[t, _lowest_bit(M[q, t])]
    S[q, p] = s


@cuda.jit
def _topk(S, k, out_idx, out_val):
    q = cuda.grid(1)
    if q >= S.shape[0]:
        return
    ti = cuda.local.array(MAX_K, dtype=np.int64)
    tv = cuda.local.array(MAX_K, dtype=np.float64)
    for j in range(k):
        ti[j] = -1
        tv[j] = -math.inf
    for p in range(S.shape[1]):
        v = S[q, p]
        if ti[k - 1] >= 0 and not v > tv[k - 1]:
            continue
        j = k - 1
        while j > 0 and (ti[j - 1] < 0 or v > tv[j - 1]):
            ti[j] = ti[j - 1]
            tv[j] = tv[j - 1]
            j -= 1
        ti[j] = p
        tv[j] = v
    for j in range(k):
        out_idx[q, j] = ti[j]
        out_val[q, j] = tv[j]


def _blocks(n: int) -> int:
    return max(1, (n + _BLOCK - 1) // _BLOCK)


class CudaFactorizedScorer(FactorizedScorer):
    """:class:`FactorizedScorer` with ``score`` / ``best_of_n`` on the GPU."""

    def __init__(self, forest: ForestDescription, query_dim: int, prompt_dim: int | None = None):
        super().__init__(forest, query_dim, prompt_dim)
        ptr, feat, thr, msk = self._q
        self._d_q = tuple(cuda.to_device(a) for a in (ptr, feat, thr, msk))
        self._d_leaves = cuda.to_device(self._leaves_q)
        self._prompt_cache: tuple | None = None

    def _device_prompts(self, ps: PromptSet):
        if self._prompt_cache is None or self._prompt_cache[0] is not ps:
            masks = ps.masks if ps.masks.size else np.zeros((0, len(ps)), dtype=np.uint64)
            self._prompt_cache = (ps, cuda.to_device(np.ascontiguousarray(masks)), cuda.to_device(ps.const))
        return self._prompt_cache[1], self._prompt_cache[2]

    def _margins_device(self, query_emb, prompt_emb):
        ps = self.prepare(prompt_emb)
        Xq = self._check(query_emb, self.query_dim, "query")
        Q, P, Tq = len(Xq), len(ps), len(self._leaves_q)
        d_S = cuda.device_array((Q, P), dtype=np.float64)
        if Q == 0:
            return ps, d_S
        d_X = cuda.to_device(Xq)
        d_M = cuda.device_array((Q, max(Tq, 1)), dtype=np.uint64)
        if Tq:
            _qmasks[_blocks(Q * Tq), _BLOCK](d_X, *self._d_q, d_M)
        d_Mp, d_const = self._device_prompts(ps)
        _pairs[_blocks(Q * P), _BLOCK](d_M, self._n_mixed, self._d_leaves, d_Mp, d_const, self._base, d_S)
        return ps, d_S

    def score(self, query_emb, prompt_emb, raw: bool = False) -> np.ndarray:
        _, d_S = self._margins_device(query_emb, prompt_emb)
        return self._finish(d_S.copy_to_host(), raw)

    def best_of_n(self, query_emb, prompt_emb, top_k: int = 1, raw: bool = False):
        ps, d_S = self._margins_device(query_emb, prompt_emb)
        Q, P = d_S.shape
        k = max(1, min(int(top_k), P))
        if k > MAX_K:  # rare: rank on the host
            S = d_S.copy_to_host()
            idx = np.argsort(-S, axis=1, kind="stable")[:, :k]
            return idx, self._finish(np.take_along_axis(S, idx, 1), raw)
        d_idx = cuda.device_array((Q, k), dtype=np.int64)
        d_val = cuda.device_array((Q, k), dtype=np.float64)
        if Q:
            _topk[_blocks(Q), _BLOCK](d_S, k, d_idx, d_val)
        return d_idx.copy_to_host(), self._finish(d_val.copy_to_host(), raw)
