"""`oirl score` throughput: one local process against Dask with 1 and 2 local workers.

Same model, same input, same output for every contender (the outputs are compared byte
for byte):

* ``local``     -- ``score_file`` in this process (numba with every core)
* ``dask-1``    -- ``score_distributed`` on a LocalCluster of 1 worker process (all cores to its kernel)
* ``dask-2``    -- the same on 2 worker processes (the cores shared out: 1 kernel thread each on 2 cores)

Each contender runs the job twice: *cold* (a fresh process or cluster: imports, every
worker loading the model and its kernel once) and *warm* (the same process or cluster
again: the steady state of a cluster that stays up).  The cluster start-up itself is
timed separately.  The merged output (written in input order) is part of every job.

Model: by default a 300-tree, 63-leaf LightGBM reward model over [query 384 ‖ prompt 384]
trained on the synthetic data of ``score_throughput.py`` (cached under
``$OIRL_CACHE_DIR/bench``), 16 candidate prompts; or ``--model DIR`` (e.g. the demo's
``oirl-study/gsm8k/model``).  Input: precomputed random unit query embeddings
(``--embeddings`` + ``--ids``), ``--queries`` of them.

    python benchmarks/score_dask.py [--queries 500000] [--json results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from random_queries import write_inputs  # noqa: E402

# 2: artifact schema 3 (manifest.json); a cached model of an older schema is not loadable
MODEL_VERSION = 2


def bench_model(n_trees: int, n_prompts: int, log) -> Path:
    """An oirl model artifact around the synthetic LightGBM model (cached)."""
    import lightgbm as lgb
    from score_throughput import World, cache_root

    from oirl_fast.features import FeatureLayout
    from oirl_fast.train import artifact as art
    from oirl_fast.train.reward_model import RewardModel, TrainConfig

    out = cache_root() / f"dask-model-{n_trees}-{n_prompts}-v{MODEL_VERSION}"
    if (out / art.MANIFEST_FILE).is_file():
        return out
    t0 = time.perf_counter()
    X, y = World(0).training_set(n_q=160, n_p=16, seed=1)
    config = TrainConfig(n_estimators=n_trees, nthread=2)
    params = {"objective": "binary", "num_leaves": 63, "min_data_in_leaf": 5, "learning_rate": 0.05,
              "feature_fraction": 0.5, "bagging_fraction": 0.8, "bagging_freq": 1, "max_bin": 63,
              "num_threads": 2, "verbosity": -1, "seed": 0, "force_row_wise": True}
    booster = lgb.train(params, lgb.Dataset(X, y), num_boost_round=n_trees)
    model = RewardModel.from_booster(config, booster, X.shape[1], n_trees)
    p_emb = World(0).embed(n_prompts, np.random.default_rng(7))
    meta = art.ModelMetadata(
        dataset="synthetic", backend="lightgbm", embedding_model="sentence-transformers/all-MiniLM-L6-v2",
        feature_layout=FeatureLayout(384, 384).to_dict(),
        prompts=[{"id": f"p{i}", "text": f"prompt {i}", "seen_in_training": True} for i in range(n_prompts)],
        prompt_embeddings_sha256=art.embeddings_hash(p_emb), protocol={"name": "benchmark"},
        train_config=config.to_dict(), best_iteration=n_trees, n_train_examples=len(y),
    )
    art.save_artifact(out, model, meta, p_emb, compile_library=False)
    log(f"  built the benchmark model in {time.perf_counter() - t0:.0f}s -> {out}")
    return out


def run_dask(model: Path, emb: Path, ids: Path, out: Path, workers: int, partitions: int | None, reference: bytes) -> dict:
    """Two jobs on one fresh LocalCluster: cold (workers load the model) and warm (already loaded)."""
    from distributed import Client

    from oirl_fast.cluster import local_cluster, local_threads
    from oirl_fast.scoring.dask import score_distributed

    t0 = time.perf_counter()
    with local_cluster(workers) as cluster, Client(cluster) as client:
        start = time.perf_counter() - t0
        walls = []
        for _ in range(2):
            t1 = time.perf_counter()
            s = score_distributed(model, None, out, embeddings=emb, ids=ids, client=client, partitions=partitions,
                                  threads=local_threads(workers), progress=False)
            walls.append(time.perf_counter() - t1)
            if out.read_bytes() != reference:
                raise SystemExit(f"ERROR: dask with {workers} workers wrote other lines than the local run")
            out.unlink()
    return {"cold_s": walls[0], "warm_s": walls[1], "cluster_start_s": start, "pairs": s.pairs,
            "partitions": s.partitions, "workers": s.workers}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="model artifact [default: the synthetic 300-tree model]")
    ap.add_argument("--trees", type=int, default=300)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--queries", type=int, default=500_000)
    ap.add_argument("--partitions", type=int, default=None, help="[default: score_distributed's, 4 per worker]")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731

    from oirl_fast.scoring.stream import score_file

    model = args.model or bench_model(args.trees, args.prompts, log)
    meta = json.loads((model / "metadata.json").read_text())
    n_prompts = len(meta["prompts"])
    work = args.workdir or Path(tempfile.mkdtemp(prefix="oirl-dask-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    emb, ids = write_inputs(work, args.queries, meta["feature_layout"]["query_dim"])
    pairs = args.queries * n_prompts
    load = os.getloadavg()
    log(f"{args.queries:,} queries x {n_prompts} prompts = {pairs:,} pairs; load average before: "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")

    rows = []
    walls = []
    for _ in range(2):  # cold (first import, kernel load), then warm
        t0 = time.perf_counter()
        s = score_file(model, None, work / "local.jsonl", embeddings=emb, ids=ids, progress=False)
        walls.append(time.perf_counter() - t0)
    rows.append({"engine": "local", "workers": 1, "cold_s": walls[0], "warm_s": walls[1], "pairs": s.pairs,
                 "cluster_start_s": 0.0, "partitions": 1})
    log(f"  local: {walls[0]:.2f}s cold, {walls[1]:.2f}s warm")
    reference = (work / "local.jsonl").read_bytes()
    for n in (1, 2):
        r = run_dask(model, emb, ids, work / f"dask-{n}.jsonl", n, args.partitions, reference)
        rows.append({"engine": f"dask, {n} worker{'s' if n > 1 else ''}", **r})
        log(f"  dask {n} worker(s): {r['cold_s']:.2f}s cold, {r['warm_s']:.2f}s warm (+{r['cluster_start_s']:.1f}s cluster start)")
    for r in rows:
        r["cold_pairs_per_s"] = r["pairs"] / r["cold_s"]
        r["warm_pairs_per_s"] = r["pairs"] / r["warm_s"]
    print("| engine | partitions | job wall, cold | pairs/s, cold | job wall, warm | pairs/s, warm | warm vs local | warm vs dask 1 worker |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['partitions']} | {r['cold_s']:.2f} s | {r['cold_pairs_per_s'] / 1e6:.2f} M | "
              f"{r['warm_s']:.2f} s | {r['warm_pairs_per_s'] / 1e6:.2f} M | "
              f"{r['warm_pairs_per_s'] / rows[0]['warm_pairs_per_s']:.2f}x | "
              f"{r['warm_pairs_per_s'] / rows[1]['warm_pairs_per_s']:.2f}x |")
    load = os.getloadavg()
    print(f"pairs={pairs} queries={args.queries} prompts={n_prompts} cpus={os.cpu_count()} "
          f"cluster_start_s={rows[1]['cluster_start_s']:.1f},{rows[2]['cluster_start_s']:.1f} "
          f"load_after={load[0]:.2f},{load[1]:.2f},{load[2]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "pairs": pairs, "cpus": os.cpu_count()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
