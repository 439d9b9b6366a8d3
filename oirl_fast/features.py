"""Reward-model features: the concatenation [query embedding ‖ prompt embedding].

Kept a plain concatenation on purpose: the best-of-N kernel relies on every tree
node testing either a query feature or a prompt feature.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import OirlError


@dataclass(frozen=True)
class FeatureLayout:
    """Columns [0, query_dim) are the query embedding, [query_dim, query_dim + prompt_dim) the prompt's."""

    query_dim: int
    prompt_dim: int
    kind: str = "concat"

    @property
    def n_features(self) -> int:
        return self.query_dim + self.prompt_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureLayout":
        if d.get("kind") != "concat":
            raise OirlError(f"unsupported feature layout {d.get('kind')!r}")
        return cls(int(d["query_dim"]), int(d["prompt_dim"]))


def pair_features(query_emb: np.ndarray, prompt_emb: np.ndarray, qi: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """float32 (k, dq + dp): row j is [query_emb[qi[j]] ‖ prompt_emb[pi[j]]]."""
    out = np.empty((len(qi), query_emb.shape[1] + prompt_emb.shape[1]), dtype=np.float32)
    out[:, : query_emb.shape[1]] = query_emb[qi]
    out[:, query_emb.shape[1] :] = prompt_emb[pi]
    return out


def grid_features(query_emb: np.ndarray, prompt_emb: np.ndarray) -> np.ndarray:
    """float32 (Q * P, dq + dp), query-major: every query paired with every prompt."""
    Q, P = len(query_emb), len(prompt_emb)
    return pair_features(query_emb, prompt_emb, np.repeat(np.arange(Q), P), np.tile(np.arange(P), Q))
