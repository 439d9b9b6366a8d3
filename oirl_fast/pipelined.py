"""Scoring pipeline: the reading and scoring loop, and an optional writer thread.

``oirl score`` runs the loop serially by default: with the static embedder summing on every core, a
writer thread competed for them and the pipelined loop measured 0.88x-0.91x the serial one
(``benchmarks/score_end_to_end.py --distinct``). With ``threaded=True``, finished chunks are written by a thread of their own while the loop reads, parses,
embeds and scores the next one; the file writes release the GIL. Reading and
parsing stay in the loop: a reader thread was measured to cost the static embedder
10-20% (benchmarks/score_end_to_end.py: 0.80x-0.91x the serial loop in four runs),
since parsing and the embedder's piece splitting are both Python under the GIL,
and a reader holding the GIL each time the loop released it (numpy, numba) only
delayed the loop; for MiniLM reading is under 1% of the time. A queue of two
chunks keeps memory bounded, and the writer takes chunks in input order, so the
output is byte for byte the serial one.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Iterator

_DONE = object()
DEPTH = 2  # finished chunks waiting for the writer


def run_pipeline(chunks: Iterator[list], score: Callable[[list], object], write: Callable[[list, object], None],
                 summary, threaded: bool = True) -> None:
    """``chunks`` read and ``score(chunk) -> result`` run in this thread, ``write(chunk, result)`` in
    another (``threaded=False``: in this one too, after each chunk).  ``summary.read_seconds`` gets
    the reading time.  An exception in the loop lets the writer finish the chunks already scored,
    one in the writer stops both; either is raised here, and what was written is a prefix of the
    output."""
    if not threaded:
        while True:
            t0 = time.perf_counter()
            chunk = next(chunks, _DONE)
            summary.read_seconds += time.perf_counter() - t0
            if chunk is _DONE:
                return
            write(chunk, score(chunk))
    to_write: queue.Queue = queue.Queue(DEPTH)
    stop = threading.Event()
    failures: list[BaseException] = []

    def put(item) -> bool:
        while not stop.is_set():
            try:
                to_write.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

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
        except BaseException as exc:  # noqa: BLE001 - raised in the scoring thread
            failures.append(exc)
            stop.set()

    thread = threading.Thread(target=writer, name="oirl-write", daemon=True)
    thread.start()
    try:
        while not failures:
            t0 = time.perf_counter()
            chunk = next(chunks, _DONE)
            summary.read_seconds += time.perf_counter() - t0
            if chunk is _DONE:
                break
            if not put((chunk, score(chunk))):
                break
    finally:
        # Also after an interrupt or an error in this loop: the queued chunks are complete,
        # so the writer finishes them, in order, and what is on disk does not depend on timing.
        if not stop.is_set():
            put(_DONE)
        thread.join()
        stop.set()
    if failures:
        raise failures[0]
