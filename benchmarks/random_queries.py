"""Benchmark input shared by the scoring benchmarks: random unit query embeddings plus an ids file."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_inputs(work: Path, n_queries: int, dim: int) -> tuple[Path, Path]:
    """``work/queries.npy`` float32 (n_queries, dim), rows unit-norm (seed 0), written block by block so
    memory stays flat; ``work/ids.txt`` with ids q0, q1, ... one a line.  Returns both paths."""
    emb_path, ids_path = work / "queries.npy", work / "ids.txt"
    rng = np.random.default_rng(0)
    emb = np.lib.format.open_memmap(emb_path, mode="w+", dtype=np.float32, shape=(n_queries, dim))
    for a in range(0, n_queries, 65536):
        block = rng.standard_normal((min(65536, n_queries - a), dim)).astype(np.float32)
        emb[a : a + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    emb.flush()
    del emb
    with ids_path.open("w") as fh:
        fh.writelines(f"q{i}\n" for i in range(n_queries))
    return emb_path, ids_path
