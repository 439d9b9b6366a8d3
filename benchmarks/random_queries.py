"""Benchmark input shared by the scoring benchmarks: random unit query embeddings plus an ids file, or
distinct GSM8K-style question texts."""
from __future__ import annotations

import re
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


_NUMBER = re.compile(r"\d+")


def distinct_questions(questions: list[str], n: int, seed: int = 0) -> list[str]:
    """``n`` distinct question texts: ``questions`` (those holding a number) in turn, each with every
    run of digits redrawn at random with as many digits (no leading zero where it had none), drawn
    again until the text is new (with a digit more every ten tries, so a question with one small number
    still gives new texts). Repeated texts would hide embedding cost: a piece cache sees the
    same words again, while real traffic brings new numbers."""
    import random

    pool = [q for q in questions if _NUMBER.search(q)]
    rng = random.Random(seed)

    extra = 0  # digits added when a question with few numbers has run out of new texts

    def redraw(m: re.Match) -> str:
        k = len(m.group()) + extra
        lo = 10 ** (k - 1) if k > 1 and m.group()[0] != "0" else 0
        return str(rng.randrange(lo, 10**k)).zfill(k)

    seen: set[str] = set()
    out: list[str] = []
    for i in range(n):
        q = pool[i % len(pool)]
        for attempt in range(10**9):
            extra = attempt // 10
            text = _NUMBER.sub(redraw, q)
            if text not in seen:
                break
        seen.add(text)
        out.append(text)
    return out
