"""Local worker processes: one JSON-lines input split at line starts among forked copies of this process.

Why: the per-line work that holds Python's GIL (parsing lines, formatting records) keeps one process on
one core however many threads embed and score, so on a machine with several cores the local run forks.
The parent loads the model once (start-up is paid once), then forks ``workers - 1`` children **before**
numba starts its thread pool: GNU OpenMP, numba's threading layer on Linux, cannot survive a fork once
started (a process that has started it scores alone). Each child scores one trailing byte range of the
input into an unnamed temporary file beside the output; the parent scores the first range straight
into the output, then appends the children's files in input order. So the output bytes are those of one
process (the tests compare them), a resumed run splits what is left, an interrupted run's output holds a
whole prefix of lines, and a killed run leaves no part file behind.

Only a plain JSON-lines file (or an ``--ids`` file) is split: standard input, a FIFO, gzip, CSV and Parquet
inputs, ``--strict`` runs and inputs under :data:`MIN_SPLIT_BYTES` are scored by one process.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from multiprocessing.sharedctypes import RawArray
from pathlib import Path

from ..atomic import write_errors
from ..encoders import available_cores
from ..errors import OirlError
from ..paths import is_stdio, is_stream
from .inputs import input_format, is_csv
from .partitions import line_cuts, line_offset
from .summary import ScoreSummary, add_stats

# Below this many bytes left to score, one process: a fork and a second model copy's first chunk cost more
# than half of a few thousand lines (about 16,000 queries of GSM8K length).
MIN_SPLIT_BYTES = 4 << 20
MAX_AUTO_WORKERS = 8  # auto: one process per core up to this many (each holds its own working memory)


@dataclass(frozen=True)
class Range:
    """Input bytes [start, stop) holding ``lines`` whole lines, the first of them line ``first_line``."""

    start: int
    stop: int
    first_line: int
    lines: int


@dataclass(frozen=True)
class Split:
    """``parent_lines`` lines after the resumed ones stay with this process; ``ranges`` go to children."""

    parent_lines: int
    ranges: tuple[Range, ...]


def auto_workers(threads: int | None) -> int:
    """Processes for ``workers=None``: one per core this process may use, no more than ``--threads`` when
    given, at most :data:`MAX_AUTO_WORKERS`."""
    cores = available_cores()
    return max(1, min(cores, threads or cores, MAX_AUTO_WORKERS))


def thread_pool_started() -> bool:
    """Whether numba's thread pool already runs in this process (then a fork is unsafe)."""
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    return bool(getattr(parallel, "_is_initialized", False))


def plan_split(path: Path, skip: int, workers: int, strict: bool) -> Split | None:
    """How to split ``path`` after its first ``skip`` lines among ``workers`` processes; None: one process."""
    if workers < 2 or strict or is_stream(path) or is_csv(path) or not path.is_file():
        return None
    start = line_offset(path, skip)
    size = path.stat().st_size
    if start is None or size - start < MIN_SPLIT_BYTES or thread_pool_started() or input_format(path) != "jsonl":
        return None
    cuts, before, _ = line_cuts(path, workers, start, count_all=False)
    if len(cuts) < 2:
        return None
    bounds = cuts + [size]
    ranges = tuple(Range(bounds[i], bounds[i + 1], skip + before[i] + 1,
                         before[i + 1] - before[i] if i + 1 < len(before) else -1) for i in range(1, len(cuts)))
    return Split(before[1], ranges)


class Children:
    """The forked children of one local run: started, watched, and their outputs appended in order.

    Use as a context manager: leaving it (an error, Ctrl-C) kills the children still running; their
    unnamed part files vanish with their descriptors."""

    def __init__(self, scoring, split: Split, src: Path, threads: int, out: Path):
        self.scoring, self.split, self.src, self.threads = scoring, split, src, threads
        # the parts beside the output (its file system); a stream's in the temporary folder
        self.part_dir = None if is_stream(out) else out.parent
        self.out = "<stdout>" if is_stdio(out) else out  # what a failed write of a part names
        self.lines_done = RawArray("q", len(split.ranges))  # shared with the children: their progress
        self._kids: list[tuple[int, int, object]] = []  # (pid, result pipe's read end, part file)
        self.parent = os.getpid()

    def __enter__(self) -> "Children":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()

    def start(self) -> None:
        """Fork one child per range; call before anything starts numba's thread pool in this process."""
        for i in range(len(self.split.ranges)):
            try:
                part = tempfile.TemporaryFile(dir=self.part_dir)
            except OSError as exc:
                raise OirlError(f"cannot make a worker's temporary file here ({exc.strerror}); --workers 1 needs "
                                "none", self.part_dir or tempfile.gettempdir()) from None
            r, w = os.pipe()
            try:
                pid = os.fork()
            except OSError as exc:
                part.close()
                os.close(r)
                os.close(w)
                raise OirlError(f"cannot start a worker process ({exc.strerror}); run with --workers 1") from None
            if pid == 0:  # the child: never returns into the caller's stack
                os.close(r)
                _child_main(self, i, part, w)
            os.close(w)
            self._kids.append((pid, r, part))

    def bytes_done(self) -> int:
        """Input bytes the children have scored so far (estimated from their lines; a bar's progress)."""
        done = 0
        for i, rng in enumerate(self.split.ranges):
            n = self.lines_done[i]
            if n < 0:  # finished
                done += rng.stop - rng.start
            elif rng.lines > 0:  # the last range's lines are not counted: it shows when it is done
                done += (rng.stop - rng.start) * min(n, rng.lines) // rng.lines
        return done

    def finish(self, fh, summary: ScoreSummary, tick) -> None:
        """Wait for each child in input order, append its lines to ``fh`` and add its stats to
        ``summary``; ``tick()`` is called while waiting (a progress bar)."""
        while self._kids:
            pid, r, part = self._kids[0]
            while not select.select([r], [], [], 0.2)[0]:
                tick()
            result = _read_all(r)
            os.close(r)
            status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            self._kids.pop(0)
            with part:
                outcome = json.loads(result) if result else {"killed": (pid, status)}
                if "stats" not in outcome:
                    self.kill()
                    raise _child_error(outcome, fh)
                part.seek(0)
                t0 = time.perf_counter()
                fh.flush()
                shutil.copyfileobj(part, fh, 1 << 20)
                summary.write_seconds += time.perf_counter() - t0
            stats = ScoreSummary(**outcome["stats"])
            add_stats(summary, stats)
            summary.read_seconds += stats.read_seconds
            summary.write_seconds += stats.write_seconds
            tick()

    def kill(self) -> None:
        """Stop the children still running (and reap them); their part files close."""
        for pid, r, part in self._kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            os.close(r)
            part.close()
        self._kids = []


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        b = os.read(fd, 1 << 16)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def _child_error(outcome: dict, fh) -> Exception:
    """What the parent raises for a child that did not finish: its OirlError (bad input, a failed write),
    an OirlError for one killed from outside (the out-of-memory killer, say), a bug's traceback as is."""
    if "oirl_error" in outcome:
        message, path, line = outcome["oirl_error"]
        return OirlError(message, path, line)
    if "killed" in outcome:
        pid, status = outcome["killed"]
        name = getattr(fh, "name", None)
        how = f"was killed by signal {-status}" if status < 0 else f"exited (status {status})"
        return OirlError(f"worker process {pid} {how} before it finished; the lines before "
                         "its range are written; run again with --resume, or with --workers 1 for one process",
                         name if isinstance(name, str) else None)
    return RuntimeError(f"a scoring worker process failed:\n{outcome['crashed']}")


def _child_main(children: Children, slot: int, part, result_fd: int) -> None:
    """Score range ``slot`` of the children's input into ``part``; report its stats (or its error) as JSON
    on ``result_fd``; exit."""
    from .stream import score_into

    scoring, src, rng, lines_done = children.scoring, children.src, children.split.ranges[slot], children.lines_done
    parent, threads = children.parent, children.threads
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which kills its children
        scoring.use_threads(threads)
        items = scoring.range_items(src, rng.start, rng.stop, rng.first_line)
        stats = ScoreSummary(input=str(src), output="")

        def on_chunk() -> None:
            if os.getppid() != parent:  # the parent is gone (killed): nobody will read this part
                os._exit(1)
            lines_done[slot] = stats.scored + stats.errors

        with write_errors(children.out):  # a full disk under the part is one line, as under the output
            score_into(scoring, items, part, stats, on_chunk)
            part.flush()
        lines_done[slot] = -1
        outcome = {"stats": stats.to_dict()}
    except OirlError as exc:
        outcome, code = {"oirl_error": (exc.message, exc.path, exc.line)}, 2
    except BaseException:  # noqa: BLE001 - whatever it is, the parent says it and stops
        outcome, code = {"crashed": traceback.format_exc()}, 1
    try:
        data = json.dumps(outcome).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(result_fd, view):]
        os.close(result_fd)
    finally:
        os._exit(code)
