"""A static embedder carried inside a model artifact, and a static model read without model2vec.

``oirl train`` copies the static build it embedded with into the artifact's ``embedder/``
folder (:func:`store_static`): the weights (``model.safetensors``, float16 as model2vec's
distillation writes them, about 15 MB), ``tokenizer.json``, ``config.json`` (normalize, max
length), ``modules.json`` and the build's ``settings.json`` (its identity and hashes). The copy
is byte for byte, so it hashes to the build's ``files_sha256`` and gives the same vectors; the
model card (``README.md``) is left out, as it shapes no vector. The artifact's manifest
checksums these files like every other one.

:func:`load_static_model` reads such a folder (or a build in the cache) with ``safetensors`` and
``tokenizers`` only, giving what :class:`~oirl_fast.encoders.static.StaticEncoder` reads of a
model2vec ``StaticModel``, set up as model2vec's ``StaticModel.from_pretrained`` sets it up
(no padding, truncation at ``max_length``, the same [UNK] id and median token length). Scoring
with a stored embedder therefore needs neither model2vec nor torch, and never distills.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import OirlError

EMBEDDER_DIR = "embedder"
# model2vec's default when config.json names no max_length (model2vec.model.DEFAULT_MAX_LENGTH)
DEFAULT_MAX_LENGTH = 512
_NOT_STORED = {"README.md"}  # the model card: no vector depends on it


def store_static(build: str | Path, dest: str | Path) -> Path:
    """Copy a static build's files (all but its model card) from ``build`` into ``dest`` (created);
    returns ``dest``. ``dest`` lies inside an artifact being written, so no rename is needed here."""
    build, dest = Path(build), Path(dest)
    if not (build / "settings.json").is_file():
        raise OirlError("not a complete static embedder build (no settings.json)", build)
    for path in sorted(p for p in build.rglob("*") if p.is_file()):
        rel = path.relative_to(build)
        if rel.as_posix() in _NOT_STORED:
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest / rel)
    return dest


@dataclass
class LightStaticModel:
    """The parts of a model2vec ``StaticModel`` that the fast encode path reads.

    ``embedding``: (vocabulary, dim) float16 or float32; ``weights`` and ``token_mapping``: the
    per-token weights and id mapping of vocabulary-quantized models (None otherwise);
    ``tokenizer``: a ``tokenizers.Tokenizer``."""

    embedding: np.ndarray
    tokenizer: object
    normalize: bool
    max_length: int | None
    unk_token_id: int | None
    median_token_length: int
    weights: np.ndarray | None = None
    token_mapping: np.ndarray | None = None


def load_static_model(folder: str | Path) -> LightStaticModel:
    """A static model's folder (model2vec layout) as a :class:`LightStaticModel`.

    Raises OSError or ValueError for a missing or unreadable file (the caller names the folder)."""
    from safetensors import safe_open
    from tokenizers import Tokenizer

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise ValueError("config.json is not a JSON object")
    try:
        tensors = safe_open(str(folder / "model.safetensors"), framework="numpy")
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise ValueError(f"model.safetensors: {exc}") from None
    names = set(tensors.keys())
    if "embeddings" not in names:
        raise ValueError("model.safetensors holds no 'embeddings' tensor")
    embedding = tensors.get_tensor("embeddings")
    weights = tensors.get_tensor("weights") if "weights" in names else None
    mapping = tensors.get_tensor("mapping") if "mapping" in names else None
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokens = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    if mapping is None and len(tokens) != len(embedding):
        raise ValueError(f"{len(tokens)} tokens but {len(embedding)} vectors")
    padding = tokenizer.padding
    if padding is not None:  # model2vec keeps the pad token but never pads
        tokenizer.enable_padding(pad_id=padding["pad_id"], pad_token=padding["pad_token"],
                                 pad_type_id=padding["pad_type_id"], length=0)
    max_length = config.get("max_length", DEFAULT_MAX_LENGTH)
    if max_length is None:
        tokenizer.no_truncation()
    else:
        tokenizer.enable_truncation(int(max_length))
    return LightStaticModel(
        embedding=embedding, tokenizer=tokenizer, normalize=bool(config.get("normalize", False)),
        max_length=max_length, unk_token_id=_unk_token_id(tokenizer),
        median_token_length=int(np.median([len(t) for t in tokens])), weights=weights, token_mapping=mapping)


def _unk_token_id(tokenizer) -> int | None:
    """model2vec's rule: the model's unk_token (WordPiece, BPE, word level), else a Unigram's unk_id."""
    model = tokenizer.model
    if hasattr(model, "unk_token"):
        return None if model.unk_token is None else tokenizer.token_to_id(model.unk_token)
    return json.loads(tokenizer.to_str())["model"].get("unk_id")


def stored_static_encoder(folder: Path, where: Path | None = None):
    """The :class:`~oirl_fast.encoders.static.StaticEncoder` of an artifact's ``embedder/`` folder.

    A folder that no longer hashes to its recorded build is refused (never rebuilt or discarded:
    it belongs to the artifact)."""
    from .static import StaticEncoder
    from .static_files import StaticBuildChanged

    try:
        return StaticEncoder(folder)
    except StaticBuildChanged as exc:
        raise OirlError(f"the model's stored static embedder does not match its recorded build ({exc.message})",
                        where or folder) from None
