"""Three-stage scoring pipeline: a reader thread, the scoring loop, a writer thread.

Reading and parsing the next chunks and writing finished ones run beside the loop
that embeds and scores the current chunk.  The parts that release the GIL (torch,
the numba kernels: the static embedder's pooling sum and the scorer; file writes)
then overlap with the Python parts (JSON parsing and formatting, the static
embedder's piece splitting), which is what two cores can gain.  Queues of two chunks keep memory bounded by a handful of chunks, and the
writer takes chunks in input order, so the output is byte for byte the serial one.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Iterator

_DONE = object()
DEPTH = 2  # chunks waiting between two stages


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def run_pipeline(chunks: Iterator[list], score: Callable[[list], list[str]],
                 write: Callable[[list[str], int], None], summary) -> None:
    """``score(chunk) -> lines`` in this thread; ``chunks`` read in one thread, ``write(lines, n)``
    in another.  ``summary.read_seconds`` gets the reader's busy time.  An exception in any
    stage stops the others and is raised here; what was written is a prefix of the output."""
    to_score: queue.Queue = queue.Queue(DEPTH)
    to_write: queue.Queue = queue.Queue(DEPTH)
    stop = threading.Event()

    def put(q: queue.Queue, item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader():
        try:
            while True:
                t0 = time.perf_counter()
                chunk = next(chunks, _DONE)
                summary.read_seconds += time.perf_counter() - t0
                if not put(to_score, chunk) or chunk is _DONE:
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the scoring thread
            put(to_score, _Failure(exc))

    def writer():
        try:
            while not stop.is_set():
                try:
                    item = to_write.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is _DONE:
                    return
                write(*item)
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)
            stop.set()

    failures: list[BaseException] = []
    threads = [threading.Thread(target=reader, name="oirl-read", daemon=True),
               threading.Thread(target=writer, name="oirl-write", daemon=True)]
    for t in threads:
        t.start()
    try:
        while not failures:
            chunk = to_score.get()
            if chunk is _DONE:
                break
            if isinstance(chunk, _Failure):
                raise chunk.exc
            lines = score(chunk)
            if not put(to_write, (lines, len(chunk))):
                break
    except BaseException:
        stop.set()
        raise
    finally:
        if not stop.is_set():
            put(to_write, _DONE)  # the writer finishes what is queued, in order
        threads[1].join()
        stop.set()  # the reader stops at its next chunk
        _drain(to_score)
        threads[0].join(timeout=5)
    if failures:
        raise failures[0]


def _drain(q: queue.Queue) -> None:
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass
