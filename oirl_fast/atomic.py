"""Write files and directories so a crash never leaves a half-written one that looks whole."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def write_errors(target: str | Path, *own: str | Path, within: str | Path | None = None) -> Iterator[None]:
    """Turn a failed write of ``target`` (no space left, read-only folder, a folder in the way)
    into one OirlError naming it. Only errors on ``target``, on the files ``own`` (its
    temporary files), under the folder ``within`` or on no file (a failed ``write()``) are
    turned; others (a missing input, say) keep their type."""
    from .paths import write_error

    try:
        yield
    except OSError as exc:
        name = None if exc.filename is None else str(exc.filename)
        mine = name is None or name in {str(target), *map(str, own)} or (
            within is not None and name.startswith(str(within) + os.sep))
        err = write_error(exc, target) if mine else None
        if err is None:
            raise
        raise err from None


_HOST = socket.gethostname().replace(os.sep, "_")


def _tmp_prefix(target: Path) -> str:
    """Temporary names say which process made them (``.NAME.HOST-PID-xxxx.tmp``), so that one left by a
    killed process is recognised and removed by the next write of the same target."""
    return f".{target.name}.{_HOST}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def sweep_debris(target: Path) -> None:
    """Remove the temporary files and folders of earlier writes of ``target`` whose process, on this
    host, is gone (killed mid-write). Another host's or a live process's are left alone."""
    head = f".{target.name}.{_HOST}-"
    try:
        names = [n for n in os.listdir(target.parent) if n.startswith(head) and n.endswith(".tmp")]
    except OSError:
        return
    for name in names:
        pid = name[len(head):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            path = target.parent / name
            if name.endswith("-old.tmp") and not os.path.lexists(target):
                # killed between moving the old target aside and renaming the new one in: put it back
                with contextlib.suppress(OSError):
                    os.replace(path, target)
                    continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only on success."""
    target = Path(target)
    with write_errors(target, target.parent):
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_debris(target)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with write_errors(target, tmp_path):
            yield tmp_path
            # mkstemp creates files private to the owner; give the result ordinary permissions.
            os.chmod(tmp_path, 0o666 & ~_umask())
            os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces ``target`` whole.

    An existing ``target`` is moved aside first and removed only after the new one
    is in place, so an interrupted write keeps the old directory.
    """
    target = Path(target)
    with write_errors(target, target.parent):
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_debris(target)
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), suffix=".tmp", dir=target.parent))
        # mkdtemp makes a folder private to the owner; the result gets the user's umask, like mkdir
        os.chmod(tmp, 0o777 & ~_umask())
    try:
        with write_errors(target, within=tmp):
            yield tmp
        old = None
        if target.exists():
            old = target.parent / f"{_tmp_prefix(target)}old.tmp"  # swept like the others if killed here
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
