"""The static embedder's encode loop: texts as UTF-8 bytes, split into words, each word's token ids
remembered in a hash table, token rows summed by compiled loops that release the GIL.

Why it splits where it does: the BERT normalizer (clean text, NFD, lowercase, accents off) changes a
text character by character (case and canonical order only look inside a run of non-space
characters), and the BERT pre-tokenizer splits at whitespace, then isolates every punctuation
character; WordPiece then tokenizes each word on its own. So a text's ids are the concatenation of
its words' ids, and a word tokenized alone gets the ids it gets inside the text. Only the easy part
of that spec is done here: a *piece* (a run of bytes between ASCII spaces, tabs, CRs and LFs) of
printable ASCII is split into its BERT words (letter-and-digit runs, single punctuation marks),
lowercased; any other piece (non-ASCII, or holding a control character the normalizer deletes) is
kept whole and raw. Every key that is not in the table yet goes to the model's own tokenizer
(``tokenizers``' ``encode_batch_fast``), which owns normalization and WordPiece; the table only
remembers the answer. Texts holding the separator (NUL) or an added token such as ``[UNK]`` (matched
in the raw text before any split) never come here: the caller tokenizes them whole.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
from numba import njit

MAX_WORDS = 200_000  # keys remembered before the table starts again (about 20 MB with its arrays)
MAX_KEY_BYTES = 16 << 20  # bytes of remembered keys (long raw pieces) before it starts again

_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)


@njit(inline="always")
def _is_space(c):  # pragma: no cover - numba
    return c == 32 or c == 10 or c == 9 or c == 13


@njit(inline="always")
def _is_alnum(c):  # pragma: no cover - numba
    return (48 <= c <= 57) or (97 <= c <= 122) or (65 <= c <= 90)


@njit(inline="always")
def _next_key(data, p, q, plain, end):  # pragma: no cover - numba
    """The next key of a text ending at ``end``, from position ``p`` inside the current piece ``[.., q)``
    (``p >= q``: find the next piece). Returns (key start, key end, next p, q, plain, found); a plain
    key (a word of a printable-ASCII piece) is compared lowercased."""
    if p >= q:
        while p < end and _is_space(data[p]):
            p += 1
        if p >= end:
            return p, p, p, p, True, False
        q = p
        plain = True
        while q < end and not _is_space(data[q]):
            c = data[q]
            if c < 33 or c > 126:
                plain = False
            q += 1
        if not plain:
            return p, q, q, q, False, True
    if _is_alnum(data[p]):
        a = p
        while p < q and _is_alnum(data[p]):
            p += 1
        return a, p, p, q, True, True
    return p, p + 1, p + 1, q, True, True


@njit(inline="always")
def _lower(c, plain):  # pragma: no cover - numba
    if plain and 65 <= c <= 90:
        return c + 32
    return c


@njit(inline="always")
def _hash(data, a, b, plain):  # pragma: no cover - numba
    """FNV-1a of the key's bytes (lowercased when plain)."""
    h = _FNV_OFFSET
    for p in range(a, b):
        h = (h ^ np.uint64(_lower(data[p], plain))) * _FNV_PRIME
    return h


@njit(inline="always")
def _find(data, a, b, plain, h, slots, meta, key_bytes):  # pragma: no cover - numba
    """The entry of key ``data[a:b]`` (hash ``h``), or ``-1 - slot`` of the free slot where it would go."""
    mask = slots.shape[0] - 1
    s = np.int64(h & np.uint64(mask))
    n = b - a
    while True:
        e = np.int64(slots[s, 1]) - 1
        if e < 0:
            return -1 - s
        if slots[s, 0] == h and meta[e, 1] == n:
            ks = meta[e, 0]
            same = True
            for k in range(n):
                if _lower(data[a + k], plain) != key_bytes[ks + k]:
                    same = False
                    break
            if same:
                return e
        s = (s + 1) & mask


@njit(cache=True, nogil=True)
def _sum_texts(data, starts, ends, order, lo, hi, slots, meta, key_bytes, tokens, limit, unk, table, sums, counts,
               missing):  # pragma: no cover - numba
    """For texts ``order[lo:hi]`` (text i is ``data[starts[i]:ends[i]]``): sums[i] = the rows of ``table``
    for its first ``limit`` tokens, [UNK] left out, added one token after the other in float32
    (model2vec's order); counts[i] = how many; missing[i] = a key of it is not in the table (its sum is
    then incomplete). Reads the table only, so threads may run it on disjoint texts at once."""
    d = table.shape[1]
    for j in range(lo, hi):
        i = order[j]
        p, q, end, plain = starts[i], starts[i], ends[i], True
        n, seen, miss = 0, 0, False
        while seen < limit:
            a, b, p, q, plain, found = _next_key(data, p, q, plain, end)
            if not found:
                break
            e = _find(data, a, b, plain, _hash(data, a, b, plain), slots, meta, key_bytes)
            if e < 0 or meta[e, 3] < 0:
                miss = True
                break
            ts = meta[e, 2]
            for x in range(ts, ts + meta[e, 3]):
                if seen == limit:
                    break
                seen += 1
                t = tokens[x]
                if t == unk:
                    continue
                if n == 0:
                    for k in range(d):
                        sums[i, k] = table[t, k]
                else:
                    for k in range(d):
                        sums[i, k] += table[t, k]
                n += 1
        counts[i] = n
        missing[i] = miss


@njit(cache=True, nogil=True)
def _add_keys(data, starts, ends, order, lo, slots, meta, key_bytes, sizes):  # pragma: no cover - numba
    """Enter every key of texts ``order[lo:]`` that the table lacks, its tokens unknown (tok_len -1);
    ``sizes`` = [entries, key bytes] is updated. Stops before a text that might not fit (the arrays'
    room, slots at most half full) and returns where it stopped (``len(order)`` when done)."""
    for j in range(lo, len(order)):
        i = order[j]
        p, q, end, plain = starts[i], starts[i], ends[i], True
        room = end - p  # a text has at most as many keys, and key bytes, as bytes
        if (sizes[0] + room > meta.shape[0] or sizes[1] + room > key_bytes.shape[0]
                or 2 * (sizes[0] + room) > slots.shape[0]):
            return j
        while True:
            a, b, p, q, plain, found = _next_key(data, p, q, plain, end)
            if not found:
                break
            h = _hash(data, a, b, plain)
            e = _find(data, a, b, plain, h, slots, meta, key_bytes)
            if e >= 0:
                continue
            s = -1 - e
            e = sizes[0]
            slots[s, 0] = h
            slots[s, 1] = e + 1
            meta[e, 0], meta[e, 1], meta[e, 2], meta[e, 3] = sizes[1], b - a, 0, -1
            for k in range(b - a):
                key_bytes[sizes[1] + k] = _lower(data[a + k], plain)
            sizes[0] += 1
            sizes[1] += b - a
    return len(order)


@njit(cache=True, nogil=True)
def _rehash(slots, old):  # pragma: no cover - numba
    mask = slots.shape[0] - 1
    for r in range(old.shape[0]):
        if old[r, 1] == 0:
            continue
        s = np.int64(old[r, 0] & np.uint64(mask))
        while slots[s, 1] != 0:
            s = (s + 1) & mask
        slots[s, 0], slots[s, 1] = old[r, 0], old[r, 1]


@njit(inline="always")
def _to_half(buf, bits):  # pragma: no cover - numba
    """Round float64 ``buf`` (``bits``: the same memory as uint64) in place to the nearest float16
    value, ties to even, as numpy's float64 -> float16 cast does (overflow to inf)."""
    odd = 0
    for k in range(buf.shape[0]):  # one vectorized pass finds values outside float16's normal range
        a = abs(buf[k])
        odd |= np.int64(not (6.103515625e-05 <= a < 65520.0))
    if odd == 0:  # the common case, vectorized: keep 10 of float64's 52 mantissa bits, ties to even
        for k in range(bits.shape[0]):
            u = bits[k]
            bits[k] = (u + np.uint64(0x1FFFFFFFFFF) + ((u >> np.uint64(42)) & np.uint64(1))) & np.uint64(0xFFFFFC0000000000)
        return
    for k in range(buf.shape[0]):
        x = buf[k]
        ax = abs(x)
        if ax < 6.103515625e-05:  # 2**-14: float16's subnormals, a fixed step of 2**-24, which is
            buf[k] = math.copysign((ax + 268435456.0) - 268435456.0, x)  # float64's step at 2**28
        elif ax < 65520.0:
            u = bits[k]
            bits[k] = (u + np.uint64(0x1FFFFFFFFFF) + ((u >> np.uint64(42)) & np.uint64(1))) & np.uint64(0xFFFFFC0000000000)
        elif ax == ax:
            buf[k] = math.copysign(math.inf, x)


@njit(cache=True, nogil=True)
def _mean_rows(sums, counts, a, b, half, out):  # pragma: no cover - numba
    """out[i] = sums[i] / counts[i] divided in float64 and rounded to the weights' dtype (float16 when
    ``half``, else float32), for rows a..b-1; zero where counts[i] is 0 (numpy's steps, element by element)."""
    d = sums.shape[1]
    buf = np.empty(d, dtype=np.float64)
    bits = buf.view(np.uint64)
    for i in range(a, b):
        c = counts[i]
        if c == 0:
            out[i, :] = 0
            continue
        for k in range(d):
            buf[k] = np.float64(sums[i, k]) / np.float64(c)
        if half:
            _to_half(buf, bits)
        for k in range(d):
            out[i, k] = np.float32(buf[k])


@njit(cache=True, nogil=True)
def _scale_rows(out, norms, a, half):  # pragma: no cover - numba
    """out[a + r] = out[a + r] / norms[r] in float32, rounded to float16 when ``half``."""
    d = out.shape[1]
    buf = np.empty(d, dtype=np.float64)
    bits = buf.view(np.uint64)
    for r in range(norms.shape[0]):
        nrm = norms[r]
        for k in range(d):
            buf[k] = np.float64(out[a + r, k] / nrm)
        if half:
            _to_half(buf, bits)
        for k in range(d):
            out[a + r, k] = np.float32(buf[k])


def _grown(a: np.ndarray, rows: int, fill=0) -> np.ndarray:
    if rows <= len(a):
        return a
    b = np.full((max(rows, 2 * len(a)), *a.shape[1:]), fill, dtype=a.dtype)
    b[: len(a)] = a
    return b


@dataclass(frozen=True, eq=False)
class TextBytes:
    """A batch of texts as UTF-8 bytes: text i is ``data[starts[i]:ends[i]]`` (uint8 ``data``, int64
    ``starts`` and ``ends`` (n,))."""

    data: np.ndarray
    starts: np.ndarray
    ends: np.ndarray


@dataclass(frozen=True, eq=False)
class TokenRows:
    """What a text's token ids sum: float32 (V, d) ``rows`` of the static model, the first ``limit`` tokens
    of a text (model2vec's ``max_length``), the ``unk`` id ([UNK], left out; -1: none)."""

    rows: np.ndarray
    limit: int
    unk: int


class WordTable:
    """Token ids of the keys seen so far, in flat arrays the compiled loops read: entry ``e`` is the key
    ``key_bytes[meta[e, 0]:][:meta[e, 1]]`` with tokens ``tokens[meta[e, 2]:][:meta[e, 3]]``; ``slots``
    is an open-addressing index of (hash, entry + 1) pairs, (0, 0) where free."""

    def __init__(self):
        self.slots = np.zeros((1 << 14, 2), dtype=np.uint64)
        self.meta = np.zeros((4096, 4), dtype=np.int64)
        self.key_bytes = np.zeros(1 << 16, dtype=np.uint8)
        self.tokens = np.zeros(1 << 14, dtype=np.int32)
        self.sizes = np.zeros(2, dtype=np.int64)  # entries, key bytes
        self.n_tokens = 0

    def __len__(self) -> int:
        return int(self.sizes[0])

    @property
    def full(self) -> bool:
        return self.sizes[0] > MAX_WORDS or self.sizes[1] > MAX_KEY_BYTES

    def _make_room(self, room: int) -> None:
        n, nb = int(self.sizes[0]), int(self.sizes[1])
        self.meta = _grown(self.meta, n + room)
        self.key_bytes = _grown(self.key_bytes, nb + room)
        if 2 * (n + room) > len(self.slots):
            size = len(self.slots)
            while 2 * (n + room) > size:
                size *= 2
            old, self.slots = self.slots, np.zeros((size, 2), dtype=np.uint64)
            _rehash(self.slots, old)

    def learn(self, texts: TextBytes, order, tokenize: Callable[[list[str]], list[list[int]]]) -> None:
        """Enter the missing keys of texts ``order`` with their ids from ``tokenize`` (texts -> id lists)."""
        data, starts, ends = texts.data, texts.starts, texts.ends
        first = int(self.sizes[0])
        j = 0
        while j < len(order):
            j = _add_keys(data, starts, ends, order, j, self.slots, self.meta, self.key_bytes, self.sizes)
            if j < len(order):
                self._make_room(int(ends[order[j]] - starts[order[j]]))
        last = int(self.sizes[0])
        if last == first:
            return
        kb = self.key_bytes
        keys = [kb[a : a + n].tobytes().decode("utf-8") for a, n in self.meta[first:last, :2].tolist()]
        ids = tokenize(keys)
        lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        total = int(lens.sum())
        self.tokens = _grown(self.tokens, self.n_tokens + total)
        self.tokens[self.n_tokens : self.n_tokens + total] = np.fromiter((t for row in ids for t in row), np.int32,
                                                                         count=total)
        self.meta[first:last, 2] = self.n_tokens + np.cumsum(lens) - lens
        self.meta[first:last, 3] = lens  # last: a key's ids are complete before it is marked known
        self.n_tokens += total


def _split(pool: ThreadPoolExecutor | None, threads: int, sizes: np.ndarray, fn: Callable[[int, int], None]) -> None:
    """``fn(a, b)`` over ``threads`` runs [a, b) of items of about equal total ``sizes``, the first in
    this thread, the others in ``pool``; all in this thread when one run is enough. The runs are disjoint, so what an item gets never depends on the split."""
    n = len(sizes)
    if pool is None or threads <= 1 or n < 2 * threads:
        if n:
            fn(0, n)
        return
    total = np.cumsum(sizes)
    cuts = [0, *np.searchsorted(total, total[-1] * np.arange(1, threads) / threads).tolist(), n]
    runs = [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
    jobs = [pool.submit(fn, a, b) for a, b in runs[1:]]
    try:
        fn(*runs[0])  # this thread takes a run too: the pool has threads - 1 workers
    finally:
        for job in jobs:
            job.result()


def sum_texts(table: WordTable, texts: TextBytes, order: np.ndarray, weights: TokenRows, sums: np.ndarray,
              counts: np.ndarray, pool: ThreadPoolExecutor | None, threads: int) -> np.ndarray:
    """The summing loop over texts ``order`` (int64) on ``threads`` threads, into float32 (n, d) ``sums``
    and int64 (n,) ``counts`` (see ``_sum_texts``). Returns bool ``missing`` (n,): a key of the text is not
    in ``table`` yet (its sum is incomplete)."""
    data, starts, ends = texts.data, texts.starts, texts.ends
    rows, limit, unk = weights.rows, weights.limit, weights.unk
    missing = np.zeros(len(starts), dtype=np.bool_)
    t = table

    def run(a: int, b: int) -> None:
        _sum_texts(data, starts, ends, order, a, b, t.slots, t.meta, t.key_bytes, t.tokens, limit, unk, rows, sums,
                   counts, missing)

    _split(pool, threads, ends[order] - starts[order], run)
    return missing


def pool_rows(sums: np.ndarray, counts: np.ndarray, half: bool, normalize: bool, out: np.ndarray,
              pool: ThreadPoolExecutor | None, threads: int) -> None:
    """model2vec's pooling into float32 ``out`` (n, d): the mean (float64 division) stored in the weights'
    dtype (float16 when ``half``), then, when ``normalize``, divided by its float32 norm
    (``np.linalg.norm``, + 1e-32) and stored in that dtype again; a text without tokens stays zero."""
    def run(a: int, b: int) -> None:
        _mean_rows(sums, counts, a, b, half, out)
        if normalize:
            _scale_rows(out, np.linalg.norm(out[a:b], axis=1) + 1e-32, a, half)

    _split(pool, threads, np.ones(len(counts)), run)
