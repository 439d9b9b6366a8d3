"""The files of a static (model2vec) build: which of them shape a vector, their hash, their permissions."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

from ..errors import OirlError


class StaticBuildChanged(OirlError):
    """A static embedder folder whose files no longer hash to what its build recorded."""


# Files of a static build that do not change a vector: the build's own record, the model card.
_NOT_SHAPING = {"settings.json", "README.md"}
# config.json fields that do not change a vector: where the tokenizer came from (a path on the build machine)
_CONFIG_PROVENANCE = {"tokenizer_name"}


def static_files_sha256(folder: str | Path) -> str:
    """SHA-256 over every file of a static build that shapes a vector (weights, tokenizer, config:
    normalize, max length, pooling, dtype; file names included), in name order. config.json is hashed
    as its parsed content without the tokenizer's source path, so two builds on machines with the
    venv at other paths agree."""
    folder = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in _NOT_SHAPING:
            continue
        data = path.read_bytes()
        if rel == "config.json":
            try:
                config = {k: v for k, v in json.loads(data).items() if k not in _CONFIG_PROVENANCE}
                data = json.dumps(config, sort_keys=True).encode()
            except (ValueError, AttributeError):
                pass  # unparsable: hashed as it is, so it fails the check
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0" + str(len(data)).encode() + b"\0")
        h.update(data)
    return h.hexdigest()


def _ordinary_permissions(folder: Path) -> None:
    """Files and folders as the user's umask makes them (safetensors writes its file 0600), so that
    another user, or Dask workers running as one, can read a shared cache."""
    mask = os.umask(0)
    os.umask(mask)
    for p in [folder, *folder.rglob("*")]:
        with contextlib.suppress(OSError):
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def discard_static(folder: Path) -> None:
    """Move a changed static build out of the way (then delete it), so that it is built again."""
    aside = folder.parent / f".{folder.name}.discarded-{uuid.uuid4().hex}"
    with contextlib.suppress(OSError):
        os.rename(folder, aside)
        shutil.rmtree(aside, ignore_errors=True)
