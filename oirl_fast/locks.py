"""One writer per output: an exclusive lock held for as long as a command writes there.

``with output_lock(out, "--out"):`` takes the lock of ``out`` (a file or a folder) or raises
:class:`~oirl_fast.errors.OirlError` with one line naming the job that holds it:

    error: picks.jsonl: another oirl job is writing here (pid 4242 on host-a, `oirl score ...`,
    since 2026-12-03T14:05:11Z); wait for it to finish or stop it

How: the lock is the file ``OUT.lock`` beside the output (``out`` + ``.lock``), opened and
locked with ``flock(LOCK_EX | LOCK_NB)``. The kernel releases the lock when its holder exits,
however it exits (kill -9 included), so a lock left behind by a dead process is recovered by
the next writer without a stale-lock heuristic; the file is removed on a clean release. The
holder's pid, host, command and start time are written into the file for the message above.
On NFS the Linux client maps ``flock`` onto byte-range locks, which the server arbitrates
between hosts.

A process that already holds the lock of a path may take it again (re-entrant), so a
library call that locks its output can run inside a command that locked it first.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from .errors import OirlError
from .paths import is_stream

LOCK_SUFFIX = ".lock"

_held: dict[str, int] = {}  # lock file path -> nesting depth, in this process


def lock_path(target: str | Path) -> Path:
    """The lock file of ``target``: ``target`` + ``.lock``, beside it."""
    target = Path(target)
    return target.with_name(target.name + LOCK_SUFFIX)


def _holder(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        cmd = " ".join(data.get("command") or [])[:120]
        return (f"pid {data.get('pid')} on {data.get('host')}" + (f", `{cmd}`" if cmd else "")
                + (f", since {data['started']}" if data.get("started") else ""))
    except (OSError, ValueError, AttributeError, TypeError):
        return "a process that has not yet said which"


@contextlib.contextmanager
def output_lock(target: str | Path, what: str = "the output") -> Iterator[Path]:
    """Hold the exclusive lock of ``target`` (see the module doc); yield the lock file's path.

    ``what`` names the output in the error (``--out``). Raises OirlError when another
    process holds it, or when the lock file cannot be created (a read-only folder)."""
    path = lock_path(target)
    key = os.path.abspath(path)
    if key in _held:
        _held[key] += 1
        try:
            yield path
        finally:
            _held[key] -= 1
        return
    fd = _acquire(path, Path(target), what)
    _held[key] = 1
    try:
        yield path
    finally:
        del _held[key]
        with contextlib.suppress(OSError):
            # removed while still locked, so a waiting process never locks a file no longer at the path
            if os.path.exists(path) and os.path.samestat(os.stat(path), os.fstat(fd)):
                os.unlink(path)
        os.close(fd)


def _acquire(path: Path, target: Path, what: str) -> int:
    mode = 0o666  # the umask applies, as for every other file written
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), mode)
        except OSError as exc:
            raise OirlError(f"cannot create the lock file {path.name} beside {what} ({exc.strerror or exc})",
                            target) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OirlError(f"another oirl job is writing here ({holder}); wait for it to finish or stop it "
                            f"(lock {path.name})", target) from None
        except OSError as exc:  # a file system without locks: one line, not a traceback
            os.close(fd)
            raise OirlError(f"cannot lock {path.name} beside {what} ({exc.strerror or exc})", target) from None
        # the previous holder may have removed the file between our open and our lock: lock the one at the path
        try:
            same = os.path.samestat(os.stat(path), os.fstat(fd))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record, ensure_ascii=True).encode("ascii"), 0)
        return fd


def _command() -> list[str]:
    argv = list(sys.argv)
    if argv:
        argv[0] = Path(argv[0]).name
    return [a.encode("utf-8", "backslashreplace").decode("utf-8") for a in argv]


def locks_output(where: Callable[[dict], str | Path | None], what: str = "--out"):
    """Decorator: run the function holding :func:`output_lock` of ``where(arguments)`` (its bound
    arguments by name; None: nothing to lock), e.g. ``@locks_output(lambda a: a["out_dir"])``."""
    def decorate(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            target = where(bound.arguments)
            if target is None or is_stream(target):
                return fn(*args, **kwargs)
            with output_lock(target, what):
                return fn(*args, **kwargs)

        return wrapper

    return decorate
