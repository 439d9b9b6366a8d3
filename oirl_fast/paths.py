"""Where a command may write: the one check every command runs on its path arguments first.

``check_paths(inputs, outputs)`` refuses, with an :class:`OirlError` naming the file,
before any work is done:

* an output that is the same file as any input of the command, compared by identity
  (``st_dev``, ``st_ino``) after following symlinks, so a hard link, a symlink or a
  ``..`` detour is caught like the same name; files inside an input folder (a model
  artifact, a folder of shards) count as inputs, and an input inside an output folder
  (which would be replaced) is refused too;
* two outputs of one command that are the same file;
* an output inside a model artifact folder (a file there would break its checksums,
  or be lost when the model is retrained), or that is a model's own file;
* an output whose name does not end with the format written (``--out x.csv`` for JSON lines);
* a file output that is a folder, a folder output that is a file, and a model folder
  output (``kind="artifact"``) that exists and holds something else than a model artifact;
* an output that cannot be written: its parent folder is created (as ``mkdir -p``) and
  a probe file is created and removed in it, so a read-only folder stops the command
  before a long fit or scoring run rather than after.

``-`` stands for standard input (as an input) or standard output (as an output).
"""
from __future__ import annotations

import errno
import glob as globmod
import json
import os
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from .errors import OirlError

STDIO = "-"
# Files looked at inside one input folder, at most (a model folder has about five).
MAX_FOLDER_FILES = 100_000
# Write failures a user can cause and fix: one line naming the file, never a traceback.
USER_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR,
                         errno.ENOTDIR, errno.EFBIG, errno.ENAMETOOLONG, errno.ENOENT, errno.EEXIST})

LOG_SUFFIXES = (".parquet", ".jsonl")
JSONL_SUFFIXES = (".jsonl",)
JSON_SUFFIXES = (".json",)
PNG_SUFFIXES = (".png",)


@dataclass(frozen=True)
class Output:
    """One output path argument of a command.

    ``kind``: ``"file"`` (written whole by renaming a temporary file onto it),
    ``"folder"`` (a folder the command fills), or ``"artifact"`` (a model folder, replaced
    whole: allowed only when missing, empty, or a model artifact already).
    ``suffixes``: the file name endings that match the format written (``()``: any).
    """

    path: str | Path | None
    option: str
    suffixes: tuple[str, ...] = ()
    kind: str = "file"


def is_stdio(path) -> bool:
    return path is not None and str(path) == STDIO


def is_stream(path) -> bool:
    """True for ``-`` and for an existing path that is not a regular file or folder (a FIFO, /dev/stdout)."""
    if is_stdio(path):
        return True
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def identity(path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of what ``path`` names after following symlinks, or None when it does not exist."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _fd_identity(stream) -> tuple[int, int] | None:
    """Identity of the file behind a standard stream (a shell redirection ``< f`` / ``> f``), when it is a file."""
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # a test runner's in-memory stream has no descriptor
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def is_model_artifact(folder: str | Path) -> bool:
    """True when ``folder`` holds an oirl model artifact's ``metadata.json``."""
    meta = Path(folder) / "metadata.json"
    try:
        if not meta.is_file() or meta.stat().st_size > 64 << 20:
            return False
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"schema_version", "feature_layout", "prompts"} <= data.keys()


def enclosing_artifact(path: str | Path, include_self: bool = True) -> Path | None:
    """The model artifact folder ``path`` lies in (symlinks and ``..`` resolved), or None."""
    p = Path(path).resolve()
    for folder in ([p] if include_self else []) + list(p.parents):
        if folder.is_dir() and is_model_artifact(folder):
            return folder
    return None


def _expand(value) -> list[Path | str]:
    """One input argument (a path, a glob, a list of those, ``-``) as a list of paths."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _expand(v)]
    if is_stdio(value):
        return [STDIO]
    s = str(value)
    if not os.path.lexists(s) and any(ch in s for ch in "*?["):
        return [Path(q) for q in sorted(globmod.glob(s))]
    return [Path(s)]


def _folder_files(folder: Path) -> Iterator[Path]:
    n = 0
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in files:
            n += 1
            if n > MAX_FOLDER_FILES:
                return
            yield Path(root) / name


def _input_identities(inputs: Mapping[str, object]) -> tuple[dict, list[tuple[str, Path]]]:
    """({identity: (option, path)} of every input file, and of every file in an input folder;
    [(option, resolved path)] of every existing input, to find inputs inside an output folder)."""
    ids: dict[tuple[int, int], tuple[str, str]] = {}
    located: list[tuple[str, Path]] = []
    for option, value in inputs.items():
        for p in _expand(value):
            if p == STDIO:
                key = _fd_identity(sys.stdin)
                if key is not None:
                    ids.setdefault(key, (option, "standard input"))
                continue
            key = identity(p)
            if key is None:
                continue
            _check_readable(Path(p))
            ids.setdefault(key, (option, str(p)))
            located.append((option, Path(p).resolve()))
            if Path(p).is_dir():
                for f in _folder_files(Path(p)):
                    k = identity(f)
                    if k is not None:
                        ids.setdefault(k, (option, str(f)))
    return ids, located


def check_utf8_name(path: Path, what: str) -> None:
    """Refuse a model folder whose path is not valid UTF-8 (bytes a shell can pass, that LightGBM,
    XGBoost and treelite cannot open): one line before any work, not a traceback after the fit."""
    try:
        os.path.abspath(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise OirlError(f"{what} {shown}: the path is not valid UTF-8, which the native model libraries need; "
                        "rename it") from None


def _check_readable(path: Path) -> None:
    """One line naming an input that exists but cannot be read (no permission), before any work."""
    try:
        if path.is_dir():
            with os.scandir(path):
                pass
        elif stat.S_ISREG(os.stat(path).st_mode):
            with path.open("rb"):
                pass
    except OSError as exc:
        raise OirlError(f"cannot read ({exc.strerror or exc})", path) from None


def _suffix_ok(path: Path, suffixes: Sequence[str]) -> bool:
    name = path.name.lower()
    return not suffixes or any(name.endswith(s) and len(name) > len(s) for s in suffixes)


def check_paths(inputs: Mapping[str, object], outputs: Iterable[Output], probe: bool = True) -> None:
    """Refuse (OirlError) any output that would destroy an input or a model, or cannot be written; see the module doc.

    ``inputs``: option name -> path, glob, folder, ``-`` or a list of those (None: not given).
    Creates missing parent folders of the outputs and, with ``probe``, checks each can be written.
    """
    outputs = [o for o in outputs if o.path is not None]
    in_ids, located = _input_identities(inputs)
    seen: dict[tuple[int, int] | Path, str] = {}
    for o in outputs:
        if is_stdio(o.path):
            key = _fd_identity(sys.stdout)
            if key is not None and key in in_ids:
                opt, src = in_ids[key]
                raise OirlError(f"standard output is redirected to the input {opt} ({src})", src)
            continue
        path = Path(o.path)
        _check_one(o, path, in_ids, located)
        # two outputs of one command naming one file
        for key in (identity(path), path.resolve()):
            if key is None:
                continue
            if key in seen and seen[key] != o.option:
                raise OirlError(f"{o.option} and {seen[key]} name the same file", path)
            seen[key] = o.option
    if probe:
        for o in outputs:
            if not is_stdio(o.path) and not is_stream(o.path):
                ensure_writable(Path(o.path), inside=o.kind == "folder")


def _check_one(o: Output, path: Path, in_ids: dict, located: list[tuple[str, Path]]) -> None:
    streamed = is_stream(path)  # a FIFO or a device: written through, never replaced
    if o.kind == "file":
        if path.is_dir():
            raise OirlError(f"{o.option} is a folder; give a file name", path)
        if not streamed and not _suffix_ok(path, o.suffixes):
            raise OirlError(f"{o.option} must end with {' or '.join(o.suffixes)} (the format written)", path)
    elif path.exists() and not path.is_dir():
        raise OirlError(f"{o.option} is a file; this writes a folder", path)
    if o.kind == "artifact":
        check_utf8_name(path, o.option)
    key = identity(path)
    if key is not None and key in in_ids:
        opt, src = in_ids[key]
        same = "" if Path(src) == path else f" ({src})"
        raise OirlError(f"{o.option} is the same file as the input {opt}{same}; refusing to overwrite it", path)
    art = enclosing_artifact(path, include_self=o.kind != "artifact")
    if art is not None and not streamed:
        raise OirlError(f"{o.option} lies inside the model artifact {art}; write it elsewhere", path)
    if o.kind != "file" and path.is_dir():
        target = path.resolve()
        for opt, src in located:
            if src == target or target in src.parents:
                raise OirlError(f"the input {opt} ({src}) lies inside the {o.option} folder, which this would change",
                                path)
        if o.kind == "artifact" and any(path.iterdir()) and not is_model_artifact(path):
            raise OirlError(f"{o.option} exists and is not a model artifact; refusing to replace it "
                            "(give a new or empty folder, or a model folder to replace)", path)


def ensure_writable(path: Path, inside: bool = False) -> None:
    """Create ``path``'s parent folder if missing; create and remove a probe file where ``path`` will be
    written: beside it (a file or a model folder is renamed into place there), or ``inside`` a folder
    the command fills. One line naming the file (OirlError) if that fails: read-only, no space, not a folder."""
    where = path if inside and path.is_dir() else path.parent
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OirlError(f"cannot create the folder {where} ({exc.strerror or exc})", path) from None
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OirlError(f"cannot write here ({exc.strerror or exc})", path) from None


def write_error(exc: OSError, target) -> OirlError | None:
    """The one-line error for a failed write of ``target`` (no space, read-only, ...), or None for a bug."""
    phrases = ("No space left", "Read-only file system", "Permission denied", "Disk quota exceeded")
    # pyarrow's IO errors carry the reason in the message only
    if exc.errno not in USER_ERRNOS and not (exc.errno is None and any(p in str(exc) for p in phrases)):
        return None
    if target is None and exc.errno in (errno.EACCES, errno.EPERM) and exc.filename is not None:
        name = exc.filename
        if os.path.isfile(name) and not os.access(name, os.R_OK):  # a read that failed, not a write
            return OirlError(f"cannot read ({exc.strerror or exc})", name)
    return OirlError(f"cannot write ({exc.strerror or exc})", exc.filename if target is None else target)


def expand_files(items: str | Path | Sequence[str | Path], suffixes: Sequence[str], what: str) -> list[Path]:
    """The files ``items`` names (one path or a list): a file, a folder (its files ending in one of
    ``suffixes``, name order) or a glob (name order); ``what`` ("input", "log") names them in errors."""
    items = [items] if isinstance(items, (str, Path)) else list(items)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix in suffixes and q.is_file())
            if not found:
                raise OirlError(f"{what} folder holds no {' or '.join(suffixes)} files", p)
            files.extend(found)
        elif any(ch in str(item) for ch in "*?["):
            found = sorted(Path(q) for q in globmod.glob(str(item)) if Path(q).is_file())
            if not found:
                raise OirlError(f"no {what} file matches the pattern", item)
            files.extend(found)
        else:
            raise OirlError(f"{what} file not found", p)
    return files
