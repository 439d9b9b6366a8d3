"""Candidate prompts: the model's own prompt set, or a prompts file (embedded once, cached)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import OirlError
from ..jsonl import iter_objects


@dataclass
class Candidates:
    ids: list[str]
    texts: list[str]
    embeddings: np.ndarray  # float32 (P, d)
    source: str  # "model" or the prompts file

    def __len__(self) -> int:
        return len(self.ids)


def model_candidates(artifact) -> Candidates:
    meta = artifact.metadata
    return Candidates(
        ids=[str(p["id"]) for p in meta.prompts],
        texts=[str(p["text"]) for p in meta.prompts],
        embeddings=np.ascontiguousarray(artifact.prompt_embeddings, dtype=np.float32),
        source="model",
    )


def read_prompts_file(path: str | Path, embedding_model: str, dim: int, embedder_factory: Callable | None) -> Candidates:
    """Candidates from a JSONL of ``{"id", "text"}`` records (optionally with a precomputed
    ``"embedding"`` and the ``"embedding_model"`` that produced it).  Texts without an
    embedding are embedded once and cached by the embedder."""
    path = Path(path)
    if not path.is_file():
        raise OirlError("prompts file not found", path)
    ids, texts, given = [], [], {}
    seen: dict[str, int] = {}
    for n, rec in iter_objects(path, what="prompt record"):
        if "id" not in rec or "text" not in rec:
            raise OirlError("prompt record needs both \"id\" and \"text\"", path, n)
        if not isinstance(rec["text"], str):
            raise OirlError("prompt \"text\" must be a string", path, n)
        em = rec.get("embedding_model")
        if em is not None and em != embedding_model:
            raise OirlError(
                f"prompt embedded with {em!r}, but the model was trained on {embedding_model!r} embeddings",
                path, n,
            )
        rid = rec["id"]
        if isinstance(rid, bool) or not isinstance(rid, (str, int)):
            raise OirlError(f"prompt \"id\" must be a string or an integer, got {_json_type(rid)}", path, n)
        pid = str(rid)
        if not pid.strip():
            raise OirlError("prompt \"id\" is empty", path, n)
        if pid in seen:
            raise OirlError(f"duplicate prompt id {pid!r} (first on line {seen[pid]})", path, n)
        seen[pid] = n
        if "embedding" in rec:
            if em is None:
                raise OirlError("a precomputed \"embedding\" needs its \"embedding_model\"", path, n)
            try:
                vec = np.asarray(rec["embedding"], dtype=np.float32)
            except (TypeError, ValueError):
                raise OirlError("\"embedding\" must be a list of numbers", path, n) from None
            if vec.shape != (dim,):
                raise OirlError(f"\"embedding\" has shape {vec.shape}, the model expects ({dim},)", path, n)
            if not np.isfinite(vec).all():
                raise OirlError("\"embedding\" contains NaN or inf", path, n)
            given[len(ids)] = vec
        ids.append(pid)
        texts.append(rec["text"])
    if not ids:
        raise OirlError("prompts file has no prompts", path)
    emb = np.empty((len(ids), dim), dtype=np.float32)
    todo = [i for i in range(len(ids)) if i not in given]
    if todo:
        if embedder_factory is None:
            raise OirlError("prompts without embeddings need the embedding model", path)
        embedder = embedder_factory(cached=True)
        if embedder.model_id != embedding_model:
            raise OirlError(
                f"this oirl-fast embeds with {embedder.model_id!r}, the model expects {embedding_model!r}", path
            )
        vecs = embedder.embed([texts[i] for i in todo])
        if vecs.shape[1] != dim:
            raise OirlError(f"prompt embeddings have dimension {vecs.shape[1]}, the model expects {dim}", path)
        emb[todo] = vecs
    for i, v in given.items():
        emb[i] = v
    return Candidates(ids, texts, emb, str(path))


def _json_type(value) -> str:
    return {type(None): "null", bool: "a boolean", float: "a number with a fraction", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def candidates_sha256(cands: Candidates) -> str:
    h = hashlib.sha256(json.dumps([cands.ids, cands.texts], ensure_ascii=False).encode("utf-8", "surrogatepass"))
    h.update(np.ascontiguousarray(cands.embeddings, dtype=np.float32).tobytes())
    return h.hexdigest()
