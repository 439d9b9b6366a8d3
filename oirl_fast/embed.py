"""Sentence embeddings for queries and prompts, cached on disk by encoder identity and text hash.

``Embedder`` wraps any :class:`oirl_fast.encoders.Encoder` (static model2vec, MiniLM,
a local sentence-transformers folder) with an append-only on-disk cache; the cache
folder is named after the encoder's identity, so vectors of different encoders never mix.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import unicodedata
import uuid
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic import atomic_path
from .encoders import MAX_TOKENS, MINILM_DIM, MINILM_ID, MiniLMEncoder
from .errors import OirlError
from .progress import ProgressBar

MODEL_ID = MINILM_ID
EMBED_DIM = MINILM_DIM


def default_cache_dir() -> Path:
    return Path(os.environ.get("OIRL_CACHE_DIR", Path.home() / ".cache" / "oirl-fast"))


# A query must ask something: one rule for `oirl score` (an error record) and Model.pick (OirlError).
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
ZERO_VECTOR = "has no token the embedder knows (its embedding is the zero vector)"


def empty_text_reason(text: str) -> str | None:
    """Why ``text`` is no question (nothing but whitespace, or only control and format characters such
    as NUL, a zero-width space, a soft hyphen or U+FEFF), or None when it has a visible character."""
    if text[:1].isalnum():  # a letter or digit first (nearly every query): visible, and nothing to copy
        return None
    if not text.strip():
        return "is empty or only whitespace"
    if all(unicodedata.category(c) in _INVISIBLE for c in text):
        return "has no visible character (only control or format characters)"
    return None


def zero_rows(vectors: np.ndarray) -> np.ndarray:
    """bool (n,): rows of float (n, d) that are all zeros, what the static embedder gives a text none of
    whose tokens it knows (an emoji, say): scoring it would be a confident pick for no question."""
    return ~np.any(vectors != 0, axis=1)


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


BLOCK_ROWS = 256  # vectors per checksummed block of a shard (about 256 KiB at d = 256)


def _stderr_note(message: str) -> None:
    from .console import make_console

    make_console().print(f"note: {message}", soft_wrap=True)


class _Damaged(Exception):
    """A shard that fails its checks; ``drop`` says whether it may be deleted (not when only unreadable)."""

    def __init__(self, reason: str, drop: bool = True):
        super().__init__(reason)
        self.reason, self.drop = reason, drop


class EmbeddingCache:
    """Append-only store of vectors keyed by text hash, one directory per encoder.

    Each run that embeds something new adds one shard file (written to a temporary
    name, then renamed), so a crash loses at most that run's new vectors and two
    runs never overwrite each other.

    Nothing is read when the cache is opened.  The first lookup reads the shards' key
    arrays (32 bytes per stored text), never their vectors; each lookup then reads only
    the blocks of rows it asks for, from the shards holding them.  So a cache of ten million
    texts costs about 320 MB of key reads, not 15 GB of vectors, to score ten queries.

    Checked, not trusted: a shard records the SHA-256 of its keys and of every block of
    ``BLOCK_ROWS`` vectors, and each is verified when read. A shard that fails (damaged, or
    written without checksums by an older oirl-fast) is dropped, with one line through ``log``
    saying so, and its texts are embedded again; one that cannot be read (permissions) is
    skipped and left in place.
    """

    def __init__(self, root: str | Path, model_id: str = MODEL_ID, log=None):
        self.dir = Path(root) / "embeddings" / model_id.replace("/", "__")
        self.log = log or _stderr_note
        self._skip: set[Path] = set()  # shards dropped in this process
        self._reset()

    def _reset(self) -> None:
        self._shards: list[Path] = []
        self._keys: np.ndarray | None = None  # sorted, S32
        self._where: np.ndarray | None = None  # int64 (shard << 32 | row), aligned with _keys
        self._layouts: dict[int, tuple[int, int, int]] = {}  # shard -> (data offset, rows, dim)
        self._sums: dict[int, np.ndarray] = {}  # shard -> uint8 (blocks, 32) vector block digests
        self._counts: list[int] = []  # keys per shard

    # -- the key index

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        if self._keys is None:
            found = sorted(self.dir.glob("shard-*.npz")) if self.dir.is_dir() else []
            keys, where = [], []
            for shard in found:
                if shard in self._skip:
                    continue
                try:
                    k, sums = self._read_keys(shard)
                except _Damaged as exc:
                    self._drop(shard, exc)
                    continue
                s = len(self._shards)
                self._shards.append(shard)
                self._sums[s] = sums
                keys.append(k)
                self._counts.append(len(k))
                where.append((np.int64(s) << 32) | np.arange(len(k), dtype=np.int64))
            self._set_index(keys, where)
        return self._keys, self._where

    def _set_index(self, keys: list, where: list) -> None:
        allk = np.concatenate(keys) if keys else np.empty(0, "S32")
        allw = np.concatenate(where) if where else np.empty(0, np.int64)
        # stable: a key stored twice (two runs raced) resolves to its first shard
        order = np.argsort(allk, kind="stable")
        self._keys, self._where = allk[order], allw[order]

    def _drop(self, shard: Path, exc: "_Damaged") -> None:
        self._skip.add(shard)
        if exc.drop:
            with contextlib.suppress(OSError):
                shard.unlink()
            self.log(f"embedding cache shard {shard} {exc.reason}; dropped it, its texts are embedded again")
        else:
            self.log(f"embedding cache shard {shard} {exc.reason}; skipped it, its texts are embedded again")

    @staticmethod
    def _read_keys(shard: Path) -> tuple[np.ndarray, np.ndarray]:
        try:
            with np.load(shard, allow_pickle=False) as data:
                names = set(data.files)
                if not {"keys_sha256", "block_sha256"} <= names:
                    raise _Damaged("has no checksums (written by an older oirl-fast)")
                keys = data["keys"]  # an npz member is read on access: the vectors stay on disk
                keys_sum, sums = data["keys_sha256"], data["block_sha256"]
        except _Damaged:
            raise
        except PermissionError as exc:
            raise _Damaged(f"cannot be read ({exc.strerror})", drop=False) from None
        # numpy's header parser can also raise tokenize/syntax errors on a damaged file
        except Exception as exc:  # noqa: BLE001 - any failure to parse means the shard is damaged
            raise _Damaged(f"is damaged ({str(exc) or type(exc).__name__})") from None
        if keys.ndim != 1 or keys.dtype.kind != "U":
            raise _Damaged(f"is damaged (keys are {keys.dtype}{keys.shape}, not a list of strings)")
        if bytes(np.asarray(keys_sum, np.uint8)) != hashlib.sha256(keys.tobytes()).digest():
            raise _Damaged("is damaged (its keys do not match their checksum)")
        sums = np.asarray(sums)
        if sums.dtype != np.uint8 or sums.ndim != 2 or sums.shape != (-(-len(keys) // BLOCK_ROWS), 32):
            raise _Damaged("is damaged (its block checksums have the wrong shape)")
        try:
            return keys.astype("S32"), sums
        except UnicodeEncodeError:
            raise _Damaged("is damaged (keys are not text hashes)") from None

    def _layout(self, s: int) -> tuple[int, int, int]:
        """(byte offset of the vectors' data, rows, dim) of shard ``s``, checked against its keys."""
        if s not in self._layouts:
            shard = self._shards[s]
            n_keys = self._counts[s]
            try:
                with zipfile.ZipFile(shard) as zf:
                    info = zf.getinfo("vectors.npy")
                    if info.compress_type != zipfile.ZIP_STORED:
                        raise ValueError("compressed vectors")
                with shard.open("rb") as fh:
                    fh.seek(info.header_offset)
                    local = fh.read(30)
                    if local[:4] != b"PK\x03\x04":
                        raise ValueError("bad zip entry")
                    fh.seek(info.header_offset + 30 + int.from_bytes(local[26:28], "little")
                            + int.from_bytes(local[28:30], "little"))
                    version = np.lib.format.read_magic(fh)
                    shape, fortran, dtype = (np.lib.format.read_array_header_1_0(fh) if version == (1, 0)
                                             else np.lib.format.read_array_header_2_0(fh))
                    offset = fh.tell()
            except PermissionError as exc:
                raise _Damaged(f"cannot be read ({exc.strerror})", drop=False) from None
            except Exception as exc:  # noqa: BLE001 - any failure to parse means the shard is damaged
                raise _Damaged(f"is damaged ({str(exc) or type(exc).__name__})") from None
            if len(shape) != 2 or shape[0] != n_keys or fortran:
                raise _Damaged(f"is damaged ({n_keys} keys do not match vectors {dtype}{shape})")
            if dtype != np.float32:
                raise _Damaged(f"is damaged (vectors are {dtype}, not float32)")
            if shard.stat().st_size < offset + shape[0] * shape[1] * 4:
                raise _Damaged("is damaged (vectors are truncated)")
            self._layouts[s] = (offset, int(shape[0]), int(shape[1]))
        return self._layouts[s]

    def _read_rows(self, s: int, rows: np.ndarray) -> np.ndarray:
        """The vectors of ``rows`` of shard ``s``: every block holding one is read whole and checked."""
        offset, n, dim = self._layout(s)
        row_bytes = dim * 4
        out = np.empty((len(rows), dim), np.float32)
        sums = self._sums[s]
        blocks = rows // BLOCK_ROWS
        try:
            with self._shards[s].open("rb") as fh:
                for b in np.unique(blocks).tolist():
                    lo = b * BLOCK_ROWS
                    count = min(BLOCK_ROWS, n - lo)
                    fh.seek(offset + lo * row_bytes)
                    raw = fh.read(count * row_bytes)
                    if hashlib.sha256(raw).digest() != bytes(sums[b]):
                        raise _Damaged(f"is damaged (block {b} of its vectors does not match its checksum)")
                    block = np.frombuffer(raw, np.float32).reshape(count, dim)
                    sel = np.flatnonzero(blocks == b)
                    out[sel] = block[rows[sel] - lo]
        except PermissionError as exc:
            raise _Damaged(f"cannot be read ({exc.strerror})", drop=False) from None
        if not np.isfinite(out).all():
            raise _Damaged("is damaged (vectors are not finite float32)")
        return out

    # -- public

    def __len__(self) -> int:
        return len(self._index()[0])

    def lookup(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(found bool (n,), vectors float32 (found.sum(), d)) for text keys, in the order asked.
        A shard that fails its checks is dropped and the lookup done again without it."""
        while True:
            try:
                return self._lookup(keys)
            except _Damaged as exc:
                self._drop(self._shards[exc.shard], exc)
                self._reset()

    def _lookup(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        index, where = self._index()
        n = len(keys)
        if n == 0 or len(index) == 0:
            return np.zeros(n, bool), np.empty((0, 0), np.float32)
        want = np.asarray(keys, dtype="U").astype("S32")
        pos = np.minimum(np.searchsorted(index, want), len(index) - 1)
        found = index[pos] == want
        loc = where[pos[found]]
        shard, row = loc >> 32, loc & 0xFFFFFFFF
        vectors = None
        for s in np.unique(shard).tolist():
            sel = np.flatnonzero(shard == s)
            try:
                v = self._read_rows(s, row[sel])
                if vectors is not None and v.shape[1] != vectors.shape[1]:
                    raise _Damaged(f"is damaged (vectors of dimension {v.shape[1]}, others {vectors.shape[1]})")
            except _Damaged as exc:
                exc.shard = s
                raise
            if vectors is None:
                vectors = np.empty((len(loc), v.shape[1]), np.float32)
            vectors[sel] = v
        return found, vectors if vectors is not None else np.empty((0, 0), np.float32)

    def get(self, key: str) -> np.ndarray | None:
        found, vectors = self.lookup([key])
        return vectors[0] if found[0] else None

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        if not keys:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        shard = self.dir / f"shard-{uuid.uuid4().hex}.npz"
        key_arr = np.array(keys)
        vec = np.ascontiguousarray(vectors, dtype=np.float32)
        raw = vec.tobytes()
        step = BLOCK_ROWS * vec.shape[1] * 4
        block_sums = np.array([np.frombuffer(hashlib.sha256(raw[i:i + step]).digest(), np.uint8)
                               for i in range(0, len(raw), step)], dtype=np.uint8).reshape(-1, 32)
        with atomic_path(shard) as tmp:
            with tmp.open("wb") as fh:
                np.savez(fh, keys=key_arr, vectors=vec, block_sha256=block_sums,
                         keys_sha256=np.frombuffer(hashlib.sha256(key_arr.tobytes()).digest(), np.uint8))
        if self._keys is not None:  # extend a built index with the new shard; otherwise stay lazy
            s = len(self._shards)
            self._shards.append(shard)
            self._counts.append(len(keys))
            self._sums[s] = block_sums
            order = np.argsort(self._where, kind="stable")  # back to storage order, then re-sort with the new keys
            self._set_index([self._keys[order], np.asarray(keys, dtype="U").astype("S32")],
                            [self._where[order], (np.int64(s) << 32) | np.arange(len(keys), dtype=np.int64)])


class Embedder:
    """Embed texts with an encoder, through the on-disk cache.

    ``embed(texts)`` returns float32 (len(texts), encoder.dim).  ``encoder`` defaults to
    all-MiniLM-L6-v2 (``device``, ``batch_size`` and ``precision`` configure it); pass one
    from :func:`oirl_fast.encoders.make_encoder` for the others.  ``use_cache=False``
    embeds without reading or writing the cache.
    """

    def __init__(
        self,
        cache_dir: str | Path | None = None,
        device: str = "auto",
        batch_size: int = 128,
        progress: bool = True,
        use_cache: bool = True,
        precision: str = "fp32",
        encoder=None,
    ):
        if encoder is None:
            # fp32 by default: fp16 moved embeddings by at most 3e-4, yet that changed the pick of
            # 24% of GSM8K test queries (benchmarks/embed_precision.py), because tree models are
            # step functions and many candidates score within a hair of each other.
            encoder = MiniLMEncoder(device=device, batch_size=batch_size, precision=precision)
        self.encoder = encoder
        self.model_id = encoder.name
        self.dim = encoder.dim
        self.progress = progress
        self.last_new = 0  # texts the last embed() call had to encode
        # each encoder (and precision) gets a cache folder of its own
        self.cache = EmbeddingCache(cache_dir or default_cache_dir(), encoder.cache_name) if use_cache else None

    @property
    def identity(self) -> dict:
        return self.encoder.identity

    def embed(self, texts: Sequence[str], add: bool = True) -> np.ndarray:
        """Return float32 (len(texts), dim); texts seen before (this run or earlier) come from the cache.
        ``add=False``: texts not in the cache are embedded but not added to it."""
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise OirlError(f"text #{i} is {type(t).__name__}, not a string")
        # the text itself keys the de-duplication when nothing is looked up (hashing cost more
        # than the static encoder's embedding)
        keys = [text_key(t) for t in texts] if self.cache is not None else texts
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        unique = list(first)
        out_unique = np.empty((len(unique), self.dim), dtype=np.float32)
        if self.cache is not None:
            found, vectors = self.cache.lookup(unique)
            if found.any():
                if vectors.shape[1] != self.dim:
                    raise OirlError(f"cached vectors have dimension {vectors.shape[1]}, the encoder {self.dim}",
                                    self.cache.dir)
                out_unique[found] = vectors
        else:
            found = np.zeros(len(unique), bool)
        missing = np.flatnonzero(~found)
        self.last_new = len(missing)
        if len(missing):
            new_texts = [texts[first[unique[j]]] for j in missing]
            with ProgressBar("embedding", len(new_texts), enabled=self.progress) as bar:
                vecs = np.asarray(self.encoder.encode(new_texts, bar.advance), dtype=np.float32)
            if vecs.shape != (len(new_texts), self.dim):
                raise OirlError(f"the encoder returned shape {vecs.shape}, expected ({len(new_texts)}, {self.dim})")
            if self.cache is not None and add:
                self.cache.add([unique[j] for j in missing], vecs)
            out_unique[missing] = vecs
        if len(unique) == len(keys):  # no text twice: already in order
            return out_unique
        slot = {k: j for j, k in enumerate(unique)}
        return out_unique[[slot[k] for k in keys]]


def embedder_for_artifact(metadata, settings=None, *, progress: bool = False, use_cache: bool = True,
                          where: Path | None = None, log=lambda s: None, stored: Path | None = None) -> Embedder:
    """An Embedder with the encoder a model artifact was trained with (``metadata``: its ModelMetadata;
    ``settings``: an :class:`~oirl_fast.encoders.EncoderSettings`; ``stored``: the static embedder the
    artifact carries), refusing (OirlError) an encoder here that would produce other vectors."""
    from .encoders import EncoderSettings, artifact_record, encoder_for_record

    settings = settings or EncoderSettings()
    enc = encoder_for_record(artifact_record(metadata, where), settings, where=where, log=log, stored=stored)
    return Embedder(cache_dir=settings.cache_dir, progress=progress, use_cache=use_cache, encoder=enc)
