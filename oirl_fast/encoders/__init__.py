"""Text encoders: what turns queries and prompts into vectors, and how to recognise it again.

Three kinds, one interface (:class:`Encoder`), one factory (:func:`make_encoder`):

* ``static`` (the default): a model2vec static model distilled locally from the bundled
  all-MiniLM-L6-v2 (``pca_dims=256``), about 100x faster than the transformer on a CPU.
  It is built on first use (about 15 s, offline) and kept under
  ``CACHE_DIR/encoders/static-<key>/``, the key naming the base model, the distillation
  settings and the model2vec version; its weights' SHA-256 goes into every artifact.
  ``oirl train`` also copies the build into the artifact (``embedder/``, about 15 MB:
  :mod:`oirl_fast.encoders.static_store`), and scoring uses that copy: nothing is distilled,
  and neither model2vec nor torch is needed to score.
* ``minilm``: all-MiniLM-L6-v2 itself (transformer, mean pooling, L2 norm), on CUDA when present.
* a local folder holding a sentence-transformers-format encoder (bge, e5, your own):
  the transformer at the folder root, pooling from ``1_Pooling/config.json`` (mean, cls
  or max) and L2 normalization when ``modules.json`` lists a Normalize module.

``identity`` is a JSON-ready dict that says which vectors an encoder produces; the
embedding cache is keyed by it and the artifact records it, so vectors of different
encoders (or different static builds) never mix.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import OirlError
from .base import (DEFAULT_ENCODER, ENCODER_KINDS, MAX_TOKENS, MINILM_DIM, MINILM_ID, STATIC_PCA_DIMS, Encoder,
                   identity_key, minilm_path, resolve_device, sha256_of_files)
from .static import StaticEncoder, _array_sha256, available_cores, build_static, static_model_dir, static_settings
from .static_files import StaticBuildChanged, discard_static, static_files_sha256
from .static_store import stored_static_encoder
from .transformer import FolderEncoder, MiniLMEncoder, TransformerEncoder, read_st_folder

__all__ = ["DEFAULT_ENCODER", "ENCODER_KINDS", "MAX_TOKENS", "MINILM_DIM", "MINILM_ID", "STATIC_PCA_DIMS", "Encoder",
           "available_cores",
           "FolderEncoder", "MiniLMEncoder", "StaticEncoder", "TransformerEncoder", "artifact_record", "build_static",
           "EncoderSettings", "check_same_encoder", "encoder_for_record", "encoder_record", "identity_key", "legacy_record", "make_encoder",
           "minilm_path", "read_st_folder", "resolve_device", "sha256_of_files", "spec_of", "static_files_sha256", "static_model_dir",
           "static_settings"]

# --------------------------------------------------------------------------------------
# Factory and artifact records


def make_encoder(spec: str | None = None, cache_dir: str | Path | None = None, device: str = "auto",
                 batch_size: int = 128, precision: str = "fp32", log: Callable[[str], None] = lambda s: None,
                 threads: int | None = None):
    """``spec``: "static" (default), "minilm" or a folder path -> an :class:`Encoder`.

    ``threads``: the static embedder's threads (default every core; its ``threads`` attribute may
    also be set later); the vectors do not depend on it. Transformer embedders use torch's threads."""
    from ..embed import default_cache_dir  # embed imports this package

    spec = spec or DEFAULT_ENCODER
    if spec == "static":
        if precision != "fp32":
            raise OirlError("--precision applies to transformer embedders; the static embedder has one precision")
        folder = build_static(cache_dir or default_cache_dir(), log)
        try:
            return StaticEncoder(folder, threads=threads)
        except StaticBuildChanged as exc:
            log(f"{exc}; building it again")
            discard_static(folder)
            return StaticEncoder(build_static(cache_dir or default_cache_dir(), log), threads=threads)
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


@dataclass(frozen=True)
class EncoderSettings:
    """How an encoder runs here (none of it changes a vector, except ``precision`` for transformers):
    ``cache_dir`` the cache folder (static builds, embeddings; None: the default), ``device``
    (auto, cpu, cuda), ``batch_size`` texts per forward pass, ``precision`` fp32 or fp16."""

    cache_dir: str | Path | None = None
    device: str = "auto"
    batch_size: int = 128
    precision: str = "fp32"


def encoder_for_record(record: dict, settings: EncoderSettings = EncoderSettings(), *, override: str | None = None,
                       where: Path | None = None, log: Callable[[str], None] = lambda s: None,
                       stored: Path | None = None):
    """The encoder an artifact was trained with (``override``: another folder path for a moved folder
    encoder), checked to produce the same vectors. ``stored``: the static embedder the artifact
    carries (``Artifact.embedder_folder``), used as it is: nothing is distilled or cached."""
    cache_dir, device, batch_size, precision = settings.cache_dir, settings.device, settings.batch_size, settings.precision
    if stored is not None and record["kind"] == "static" and override is None:
        if precision != "fp32":
            raise OirlError("--precision applies to transformer embedders; the static embedder has one precision")
        enc = stored_static_encoder(Path(stored), where)
        check_same_encoder(record, enc, where)
        return enc
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
