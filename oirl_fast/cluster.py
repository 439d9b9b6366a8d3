"""Dask cluster set-up: a client on a given scheduler or a LocalCluster, and worker thread counts.

Shared by scale-out scoring (:mod:`oirl_fast.scoring.dask`) and training (:mod:`oirl_fast.train.dask_fit`).
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable

from .errors import OirlError

CONNECT_TIMEOUT = "10s"


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None, threads_per_worker: int = 1,
                client=None, log: Callable[[str], None] | None = None):
    """Yield a ``distributed.Client``: the one given, one connected to ``scheduler``, or a
    LocalCluster of ``workers`` processes on this machine (closed on exit)."""
    if client is not None:
        yield client
        return
    from distributed import Client

    log = log or (lambda s: None)
    if scheduler:
        try:
            c = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as exc:
            raise OirlError(f"cannot reach the Dask scheduler at {scheduler} ({_first_line(exc)})") from None
        try:
            yield c
        finally:
            c.close()
        return
    n = workers or os.cpu_count() or 1
    log(f"starting a local Dask cluster: {n} worker processes, {threads_per_worker} thread each")
    with local_cluster(n, threads_per_worker) as cluster, Client(cluster) as c:
        yield c


@contextlib.contextmanager
def local_cluster(n_workers: int, threads_per_worker: int = 1, silence_logs: int = 40):
    """A LocalCluster of worker processes that leaves this process's environment alone.

    Dask's nanny sets OMP_NUM_THREADS=1 (and MKL/OpenBLAS, MALLOC_TRIM_THRESHOLD_) in its
    *own* process before spawning each worker; in a LocalCluster that is the client
    process, where an OpenMP runtime loaded afterwards (tl2cgen, LightGBM) would then be
    capped at one thread.  Here those variables go to the workers only, set to the
    cores shared out (torch reads OMP_NUM_THREADS when it is imported there)."""
    import dask
    from distributed import LocalCluster

    t = str(local_threads(n_workers))
    env = {"OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t, "MALLOC_TRIM_THRESHOLD_": "65536"}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {}}):
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                               dashboard_address=":0", silence_logs=silence_logs, env=env)
    try:
        yield cluster
    finally:
        cluster.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def worker_count(client) -> int:
    return max(1, len(client.nthreads()))


def local_threads(workers: int | None) -> int:
    """Kernel / LightGBM threads per worker of a LocalCluster: the cores shared out."""
    n = workers or os.cpu_count() or 1
    return max(1, (os.cpu_count() or 1) // n)


def set_threads(n: int | None) -> None:
    if not n:
        return
    import numba  # here, not at the top: dask_client users that never score skip numba's import

    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    torch = sys.modules.get("torch")  # only once something embeds: importing torch costs seconds
    if torch is not None and torch.get_num_threads() != n:
        with contextlib.suppress(RuntimeError):
            torch.set_num_threads(n)
