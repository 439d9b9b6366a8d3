"""Peak memory of `oirl score` on a large job: the streaming bound, measured.

Writes N query embeddings (random unit vectors of the model's dimension) as a .npy
file plus an ids file, runs ``oirl score MODEL --embeddings ... --ids ...`` in a child
process, and reports the child's peak resident set size next to the size of the
input, so the bound can be read off: memory grows with the chunk size and the
candidate count, not with the number of queries.

    python benchmarks/score_memory.py MODEL_DIR [--pairs 10000000] [--chunk-size N] [--bound-mib 512]

The load test passes (exit 0) when every input line has its output line and the peak
RSS stays under ``--bound-mib`` (512 MiB by default: the stated bound in docs/guide/score.md for the
default chunk size and up to 256 candidates); it exits 1 otherwise.

MODEL_DIR defaults to ./oirl-study/gsm8k/model (made by `make study`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from random_queries import write_inputs  # noqa: E402


def _vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:  # the child just exited
        pass
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="oirl-study/gsm8k/model", type=Path)
    ap.add_argument("--pairs", type=int, default=10_000_000, help="query-prompt pairs in the job")
    ap.add_argument("--chunk-size", type=int, default=None, help="passed to oirl score")
    ap.add_argument("--bound-mib", type=float, default=512.0, help="peak RSS the job must stay under")
    ap.add_argument("--workdir", type=Path, default=None, help="where to write the inputs [default: a temp dir]")
    args = ap.parse_args(argv)
    meta = json.loads((args.model / "metadata.json").read_text())
    n_prompts = len(meta["prompts"])
    dim = meta["feature_layout"]["query_dim"]
    n_queries = -(-args.pairs // n_prompts)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="oirl-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    emb_path, ids_path = write_inputs(work, n_queries, dim)
    out_path = work / "picks.jsonl"

    cmd = [sys.executable, "-m", "oirl_fast.cli", "score", str(args.model), "--embeddings", str(emb_path),
           "--ids", str(ids_path), "--out", str(out_path)]
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    peak_kib = 0
    # VmHWM is the child's own high-water mark since exec. getrusage(RUSAGE_CHILDREN)
    # would also count the pages this (generating) parent had when it forked.
    while child.poll() is None:
        peak_kib = max(peak_kib, _vm_hwm_kib(child.pid))
        time.sleep(0.05)
    if child.returncode != 0:
        raise SystemExit(f"oirl score failed with exit code {child.returncode}")
    wall = time.perf_counter() - t0
    peak_mib = peak_kib / 1024
    with out_path.open() as fh:
        lines = sum(1 for _ in fh)
    input_mib = emb_path.stat().st_size / 2**20
    print(f"queries={n_queries} prompts={n_prompts} pairs={n_queries * n_prompts} lines_out={lines} "
          f"wall_s={wall:.1f} pairs_per_s={n_queries * n_prompts / wall:,.0f}")
    print(f"peak_rss_mib={peak_mib:.0f} input_embeddings_mib={input_mib:.0f} output_mib={out_path.stat().st_size / 2**20:.0f}")
    within = peak_mib <= args.bound_mib
    print(f"bound_mib={args.bound_mib:.0f} within_bound={'yes' if within else 'no'}")
    if lines != n_queries:
        print(f"ERROR: {lines} output lines for {n_queries} queries", file=sys.stderr)
        return 1
    if not within:
        print(f"ERROR: peak RSS {peak_mib:.0f} MiB exceeds the bound of {args.bound_mib:.0f} MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
