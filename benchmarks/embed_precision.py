"""Does fp16 query embedding change the picks?  Speed and pick agreement, fp32 against fp16.

Embeds the same real queries twice with all-MiniLM-L6-v2 (fp32, then the model cast to
fp16; mean pooling and normalisation stay in fp32), scores both with the model's
best-of-N kernel over its own prompt set, and reports:

* embedding time for each precision on the chosen device;
* the largest and mean absolute difference between the two embeddings;
* pick agreement: the share of queries whose best prompt is the same.  Queries whose
  fp32 scores tie at the top are counted separately (either tied prompt is a correct
  pick), and so are the queries whose pick changed, with the fp32 score lost.

    python benchmarks/embed_precision.py [MODEL_DIR] [--dataset gsm8k] [--limit 1319] [--device auto]

MODEL_DIR defaults to ./oirl-study/gsm8k/model (made by `make study`).  Measured on CPU
(2 cores), GSM8K test queries, the demo's grouped model: fp16 moved embeddings by at most
2.9e-4 yet changed 312 of 1,319 picks (mean score lost 0.006), so `oirl score` embeds in
fp32 unless told ``--precision fp16``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="oirl-study/gsm8k/model", type=Path)
    ap.add_argument("--dataset", default="gsm8k", help="bundled dataset whose queries are embedded")
    ap.add_argument("--limit", type=int, default=1319, help="number of queries (the first ones)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args(argv)

    from oirl_fast.collect.published import load_questions
    from oirl_fast.embed import Embedder
    from oirl_fast.scoring.scorer import Scorer
    from oirl_fast.train.artifact import load_artifact

    artifact = load_artifact(args.model)
    scorer = Scorer.for_artifact(artifact, route="kernel", device="cpu")
    prompts = scorer.candidates.ids
    queries = [q.query for q in load_questions(args.dataset)[: args.limit]]

    emb, secs = {}, {}
    for precision in ("fp32", "fp16"):
        e = Embedder(device=args.device, batch_size=args.batch_size, progress=False, use_cache=False,
                     precision=precision)
        e.embed(queries[:8])  # load the model and warm up outside the timing
        t0 = time.perf_counter()
        emb[precision] = e.embed(queries)
        secs[precision] = time.perf_counter() - t0
    device = e.device

    full32 = scorer.scores(emb["fp32"], dtype=np.float64)
    full16 = scorer.scores(emb["fp16"], dtype=np.float64)
    pick32, pick16 = full32.argmax(1), full16.argmax(1)
    top32 = full32.max(1)
    tied = (np.isclose(full32, top32[:, None], rtol=0, atol=1e-12).sum(1) > 1)
    same = pick32 == pick16
    # a changed pick that lands on a prompt tied at the top in fp32 is not a change
    equivalent = same | np.isclose(full32[np.arange(len(queries)), pick16], top32, rtol=0, atol=1e-12)
    changed = ~equivalent
    diff = np.abs(emb["fp32"] - emb["fp16"])
    lost = (top32 - full32[np.arange(len(queries)), pick16])[changed]

    print(f"device={device} queries={len(queries)} prompts={len(prompts)} model={args.model}")
    print(f"embed_s fp32={secs['fp32']:.2f} fp16={secs['fp16']:.2f} speedup={secs['fp32'] / secs['fp16']:.2f}x")
    print(f"embedding abs diff max={diff.max():.2e} mean={diff.mean():.2e}")
    print(f"queries tied at the top in fp32: {int(tied.sum())}")
    print(f"same_pick={same.mean():.4f} equivalent_pick={equivalent.mean():.4f} changed={int(changed.sum())}"
          + (f" mean_score_lost={lost.mean():.2e} max_score_lost={lost.max():.2e}" if changed.any() else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
