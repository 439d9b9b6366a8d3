"""Reward-model training on Dask: ``lightgbm.dask`` / ``xgboost.dask``.
model with ``lightgbm.dask`` or ``xgboost.dask``: the split and the pooling into
(question, prompt) cells run on the client (they touch only the log's text and
verdicts), the [query ‖ prompt] feature rows are built on the workers, one block
of cells each, and the boosting is LightGBM's / XGBoost's own data-parallel
training.  The booster is brought back and written as the usual artifact (native
model, compiled library, kernel-ready trees, calibrator), with the engine noted in
``metrics.engine``.

"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..cluster import dask_client, local_threads, set_threads, worker_count
from ..embed import Embedder
from ..locks import locks_output
from ..encoders import EncoderSettings, encoder_for_record, encoder_record, legacy_record
from ..paths import LOG_SUFFIXES, expand_files
from ..features import pair_features
from ..schema import read_logs
from .fit import FittedModel, static_folder, train_question_hashes, training_metadata, training_set, write_artifact
from .reward_model import RewardModel, group_validation_split, lightgbm_params, xgboost_params

if TYPE_CHECKING:
    import pyarrow as pa

_WORKER_CACHE: dict = {}


def read_log_parts(log: str | Path | Sequence[str | Path]):
    """A log from one file, a folder of Parquet / JSONL shards, or a glob of them (name order)."""
    import pyarrow as pa

    files = expand_files(log, LOG_SUFFIXES, "log")
    tables = [read_logs(f) for f in files]
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")


@dataclass(frozen=True)
class DaskTraining:
    """Where the Dask fit runs and how its workers embed.

    The cluster: ``client`` (a ``distributed.Client``, used as it is), else the scheduler at
    ``scheduler``, else a LocalCluster of ``workers`` processes (default: one per core), closed at
    the end. ``partitions``: blocks of training cells (default: 50,000 cells each, at least two per
    worker); ``threads``: threads per worker task (default: a local cluster's cores shared out among
    its workers; numba's and torch's defaults on a remote one). ``encoder``: the cache folder,
    device and batch size the workers' encoder runs with (and the default MiniLM embedder's)."""

    scheduler: str | None = None
    workers: int | None = None
    partitions: int | None = None
    threads: int | None = None
    encoder: EncoderSettings = EncoderSettings()
    client: object = field(default=None, compare=False)


def _feature_block(texts: list[str], u: np.ndarray, p: np.ndarray, prompt_emb: np.ndarray,
                   encoder: EncoderSettings, threads: int | None, embedder_record: dict | None = None) -> np.ndarray:
    """On a worker: [query ‖ prompt] rows of one block of cells; the block's queries are embedded
    there (from the shared embedding cache when present) with the client's embedder, checked
    to be the same build."""
    set_threads(threads)
    record = embedder_record or legacy_record()
    key = ("embedder", encoder.cache_dir, encoder.device, encoder.batch_size, json.dumps(record, sort_keys=True))
    emb = _WORKER_CACHE.get(key)
    if emb is None:
        enc = encoder_for_record(record, encoder)
        emb = _WORKER_CACHE[key] = Embedder(cache_dir=encoder.cache_dir, progress=False, encoder=enc)
    return pair_features(emb.embed(texts), prompt_emb, u, p)


def _leaf_table(booster) -> np.ndarray:
    """float64 (trees, max leaves): LightGBM leaf values by leaf index."""
    info = booster.dump_model()["tree_info"]
    width = max(t["num_leaves"] for t in info)
    table = np.zeros((len(info), width))

    def walk(node, t):
        if "leaf_index" in node:
            table[t, node["leaf_index"]] = node["leaf_value"]
        elif "left_child" in node:
            walk(node["left_child"], t)
            walk(node["right_child"], t)
        else:  # a single-leaf tree
            table[t, 0] = node.get("leaf_value", 0.0)

    for t, tree in enumerate(info):
        walk(tree["tree_structure"], t)
    return table


def _loss_curve_block(X: np.ndarray, y: np.ndarray, w: np.ndarray, booster, table: np.ndarray) -> np.ndarray:
    """On a worker: summed weighted cross entropy after each boosting round, on one block of validation cells."""
    leaves = np.asarray(booster.predict(X, pred_leaf=True), dtype=np.int64).reshape(len(X), -1)
    raw = np.cumsum(table[np.arange(table.shape[0]), leaves], axis=1)
    prob = np.clip(1.0 / (1.0 + np.exp(-raw)), 1e-15, 1 - 1e-15)
    loss = -(y[:, None] * np.log(prob) + (1 - y[:, None]) * np.log(1 - prob))
    return (w[:, None] * loss).sum(axis=0)[None, :]


def early_stopping_point(curve: np.ndarray, rounds: int) -> int:
    """Best number of rounds under LightGBM's early-stopping rule (strict improvement, patience ``rounds``)."""
    best, best_loss = 0, np.inf
    for t, v in enumerate(curve):
        if v < best_loss:
            best, best_loss = t, v
        elif t - best >= rounds:
            break
    return best + 1


def _predict_block(X: np.ndarray, model) -> np.ndarray:
    return model.predict(X)


@locks_output(lambda a: a["out_dir"])
def train_distributed(
    log: str | Path | Sequence[str | Path] | "pa.Table",
    protocol,
    config,
    out_dir: str | Path | None = None,
    *,
    embedder=None,
    cluster: DaskTraining = DaskTraining(),
    compile_library: bool = True,
    log_fn: Callable[[str], None] = print,
):
    """Fit the reward model with ``lightgbm.dask`` / ``xgboost.dask``; write the artifact to ``out_dir``.

    ``log``: a table, a log file, a folder of Parquet / JSONL shards or a glob of them; ``embedder``:
    the client's Embedder (default: MiniLM with ``cluster.encoder``'s settings), which the workers rebuild
    from its record; ``cluster``: where it runs and the workers' settings (:class:`DaskTraining`).
    Returns the Artifact (or the FittedModel when ``out_dir`` is None).  The training
    cells, their validation split by question group, the early stopping on the
    validation loss and the calibrator are those of the single-machine fit."""
    import dask
    import dask.array as da
    import pyarrow as pa

    scheduler, workers, partitions, threads = cluster.scheduler, cluster.workers, cluster.partitions, cluster.threads
    client, settings = cluster.client, cluster.encoder
    table = log if isinstance(log, pa.Table) else read_log_parts(log)
    cache_dir = None if settings.cache_dir is None else str(Path(settings.cache_dir).resolve())
    settings = replace(settings, cache_dir=cache_dir)  # absolute: the workers may run elsewhere
    if embedder is None:
        embedder = Embedder(cache_dir=cache_dir, device=settings.device, batch_size=settings.batch_size,
                            progress=False)
    ts = training_set(table, protocol, embedder, None if isinstance(log, pa.Table) else log)
    record = encoder_record(embedder.encoder)
    u, p, y, w, groups = ts.cells()
    valid = group_validation_split(groups, config.valid_fraction, config.seed)
    pe = np.ascontiguousarray(ts.train_prompt_emb, dtype=np.float32)
    dim = embedder.dim + pe.shape[1]
    texts = ts.train.texts

    with dask_client(scheduler, workers, client=client, log=log_fn) as cl:
        n_workers = worker_count(cl)
        if threads is None and scheduler is None and client is None:
            threads = local_threads(workers)
        n_parts = partitions or max(2 * n_workers, -(-len(y) // 50_000))
        addrs = sorted(cl.nthreads())
        futures = []

        def blocks(mask: np.ndarray, parts: int):
            """Feature rows built on the workers, block i on worker i mod n (labels and weights beside
            them), so every worker holds its share of the data when the boosting starts."""
            idx = np.flatnonzero(mask)
            pieces = [c for c in np.array_split(idx, min(parts, max(1, len(idx)))) if len(c)]
            xs, ys, ws = [], [], []
            for i, c in enumerate(pieces):
                where = [addrs[i % len(addrs)]]
                units, local = np.unique(u[c], return_inverse=True)
                fx = cl.submit(_feature_block, [texts[k] for k in units], local, p[c], pe, settings, threads, record,
                               workers=where, pure=False)
                fy = cl.submit(np.asarray, y[c], workers=where, pure=False)
                fw = cl.submit(np.asarray, w[c], workers=where, pure=False)
                futures.extend([fx, fy, fw])
                xs.append(da.from_delayed(fx, shape=(len(c), dim), dtype=np.float32))
                ys.append(da.from_delayed(fy, shape=(len(c),), dtype=np.float64))
                ws.append(da.from_delayed(fw, shape=(len(c),), dtype=np.float64))
            return da.concatenate(xs, axis=0), da.concatenate(ys), da.concatenate(ws)

        X_tr, y_tr, w_tr = blocks(~valid, n_parts)
        X_va, y_va, w_va = blocks(valid, max(1, n_workers))
        from distributed import as_completed

        for _ in as_completed(futures):  # waits on the futures' own client, default or not
            pass
        bad = [f for f in futures if f.status == "error"]
        if bad:
            bad[0].result()  # raises the worker's error here
        log_fn(f"  dask: {len(y)} cells in {X_tr.numblocks[0]} + {X_va.numblocks[0]} blocks on {n_workers} workers")

        t0 = time.perf_counter()
        if config.backend == "lightgbm":
            import lightgbm as lgb
            from lightgbm.dask import DaskLGBMRegressor

            params = lightgbm_params(config)
            params.pop("objective")
            params.pop("num_threads")  # lightgbm.dask uses each worker's own thread count
            est = DaskLGBMRegressor(client=cl, objective="cross_entropy", n_estimators=config.n_estimators,
                                    **_sklearn_lgb_params(params))
            with warnings.catch_warnings():  # the wrapper's own n_jobs default, replaced by the workers' threads
                warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
                est.fit(X_tr, y_tr, sample_weight=w_tr)
            booster = est.booster_
            # Early stopping as the single-machine fit does it, on the validation loss after
            # each round, computed block by block on the workers.
            table_ = _leaf_table(booster)
            b_d, t_d = dask.delayed(booster, pure=True), dask.delayed(table_, pure=True)
            parts = [da.from_delayed(dask.delayed(_loss_curve_block)(xb, yb, wb, b_d, t_d), shape=(1, table_.shape[0]),
                                     dtype=np.float64)
                     for xb, yb, wb in zip(X_va.to_delayed().ravel(), y_va.to_delayed().ravel(), w_va.to_delayed().ravel())]
            curve = cl.compute(da.concatenate(parts, axis=0).sum(axis=0)).result() / float(w[valid].sum())
            best_iteration = early_stopping_point(curve, config.early_stopping_rounds)
            booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best_iteration))
        else:
            import xgboost.dask as dxgb

            params = xgboost_params(config)
            if threads:
                params["nthread"] = threads
            dtrain = dxgb.DaskDMatrix(cl, X_tr, y_tr, weight=w_tr)
            dvalid = dxgb.DaskDMatrix(cl, X_va, y_va, weight=w_va)
            res = dxgb.train(cl, params, dtrain, num_boost_round=config.n_estimators, evals=[(dvalid, "valid")],
                             early_stopping_rounds=config.early_stopping_rounds, verbose_eval=False)
            best_iteration = int(res["booster"].best_iteration) + 1
            booster = res["booster"][:best_iteration]
        model = RewardModel.from_booster(config, booster, dim, best_iteration)
        fit_seconds = time.perf_counter() - t0
        prob_valid = cl.compute(X_va.map_blocks(_predict_block, model, drop_axis=1, dtype=np.float64)).result()
        model.finish(y[valid], w[valid], prob_valid)
    log_fn(f"  fitted {config.backend} on dask ({n_workers} workers): {model.best_iteration} trees on "
           f"{len(y)} (question, prompt) cells in {fit_seconds:.1f}s")
    engine = {"name": "dask", "library": f"{config.backend}.dask", "workers": n_workers,
              "partitions": int(X_tr.numblocks[0]), "scheduler": scheduler or "local"}
    metadata = training_metadata(ts, model, embedder, embedder.dim, len(y), fit_seconds, {"engine": engine})
    fitted = FittedModel(model, metadata, ts.prompt_emb, train_question_hashes(ts.split), static_folder(embedder.encoder))
    if out_dir is None:
        return fitted
    return write_artifact(fitted, out_dir, compile_library)


def _sklearn_lgb_params(params: dict) -> dict:
    """LightGBM native parameter names to the scikit-learn wrapper's, where it has its own name."""
    rename = {"learning_rate": "learning_rate", "num_leaves": "num_leaves",
              "min_sum_hessian_in_leaf": "min_child_weight", "min_data_in_leaf": "min_child_samples",
              "feature_fraction": "colsample_bytree", "bagging_fraction": "subsample", "bagging_freq": "subsample_freq",
              "seed": "random_state"}
    return {rename.get(k, k): v for k, v in params.items()}
