"""Dask cluster set-up: a client on a given scheduler or a LocalCluster, and worker thread counts.

Shared by scale-out scoring (:mod:`oirl_fast.scoring.dask`) and training (:mod:`oirl_fast.train.dask_fit`).
"""
from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys
from typing import Callable

from .extras import require
from .errors import OirlError

CONNECT_TIMEOUT = "10s"
PROBE_SECONDS = 10.0
MAX_HANDSHAKE_BYTES = 1 << 20  # a Dask handshake is a few hundred bytes


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None, threads_per_worker: int = 1,
                client=None, log: Callable[[str], None] | None = None):
    """Yield a ``distributed.Client``: the one given, one connected to ``scheduler``, or a
    LocalCluster of ``workers`` processes on this machine (closed on exit)."""
    if client is not None:
        yield client
        return
    Client = require("distributed", "--engine dask").Client

    log = log or (lambda s: None)
    if scheduler:
        probe_scheduler(scheduler)
        try:
            c = Client(scheduler, timeout=CONNECT_TIMEOUT)
        # MemoryError: a service that is not Dask answered, and its bytes were read as a frame length
        except (OSError, TimeoutError, ValueError, MemoryError) as exc:
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
    dask = require("dask", "--engine dask")
    LocalCluster = require("distributed", "--engine dask").LocalCluster

    t = str(local_threads(n_workers))
    env = {"OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t, "MALLOC_TRIM_THRESHOLD_": "65536"}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {}}):
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                               dashboard_address=":0", silence_logs=silence_logs, env=env)
    try:
        yield cluster
    finally:
        cluster.close()


def probe_scheduler(address: str, timeout: float | None = None) -> None:
    """Refuse, with one line and within ``timeout`` seconds per step, a TCP address where no Dask
    scheduler listens. A Dask server speaks first: on connection it sends its handshake, 8 bytes of
    little-endian length and that many bytes. An HTTP server (the dashboard port, a common
    mistake) sends nothing and would keep ``Client`` waiting for good; another service's reply
    would be read as a length of exabytes (a MemoryError). Other schemes (tls://, inproc://) are
    left to ``Client``'s own timeout."""
    timeout = PROBE_SECONDS if timeout is None else timeout
    scheme, _, rest = address.rpartition("://")
    if scheme not in ("", "tcp"):
        return
    host, _, port = rest.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit():
        raise OirlError(f"--scheduler {address}: give an address such as tcp://10.0.0.5:8786")
    where = f"the Dask scheduler at {address}"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.settimeout(timeout)
            head = b""
            while len(head) < 8:
                chunk = sock.recv(8 - len(head))
                if not chunk:
                    raise OirlError(f"cannot reach {where} (it closed the connection without a Dask handshake)")
                head += chunk
    except socket.timeout:
        raise OirlError(f"no Dask scheduler at {address}: it sent no Dask handshake within {timeout:.0f} s "
                        f"(a dashboard or other HTTP port? a scheduler listens on 8786 by default)") from None
    except OSError as exc:
        raise OirlError(f"cannot reach {where} ({exc.strerror or exc})") from None
    length = struct.unpack("<Q", head)[0]
    if not 0 < length < MAX_HANDSHAKE_BYTES:
        raise OirlError(f"no Dask scheduler at {address}: it answered {head!r}, not a Dask handshake")


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
