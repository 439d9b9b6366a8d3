"""The kernel's tree description saved beside the native model, so that scoring needs no treelite.

``oirl train`` reads the native model through treelite once (as the kernel would on every load)
and saves the resulting :class:`~oirl_fast.kernels.quickscorer.ForestDescription` as
``kernel_forest.npz`` in the artifact: integer and float arrays plus a JSON header of the
scalars, no pickled objects. Scoring rebuilds the description from it with numpy alone; the
artifact's manifest checksums the file, and the native model stays the source of truth (the
compiled library and ``native`` predict are still built from it).
"""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import OirlError

if TYPE_CHECKING:  # the kernel module imports numba, which loading an artifact does not need
    from .quickscorer import ForestDescription

FOREST_FILE = "kernel_forest.npz"
FOREST_FORMAT = 1
_ARRAYS = ("tree_ptr", "node_feature", "node_threshold", "node_mask", "leaf_values", "n_leaves")


def save_forest(forest: ForestDescription, path: str | Path) -> Path:
    """Write ``forest`` to ``path`` (an .npz file); returns the path."""
    path = Path(path)
    header = {f.name: getattr(forest, f.name) for f in fields(forest) if f.name not in _ARRAYS}
    header["format"] = FOREST_FORMAT
    with path.open("wb") as fh:
        np.savez(fh, header=np.array(json.dumps(header)), **{k: getattr(forest, k) for k in _ARRAYS})
    return path


def load_forest(path: str | Path) -> ForestDescription:
    """A :class:`ForestDescription` from a file of :func:`save_forest` (OirlError naming it if unreadable)."""
    from .quickscorer import ForestDescription

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            arrays = {k: np.array(data[k]) for k in _ARRAYS}
    except (OSError, ValueError, KeyError) as exc:
        raise OirlError(f"unreadable kernel tree file ({exc})", path) from None
    if not isinstance(header, dict) or header.pop("format", None) != FOREST_FORMAT:
        raise OirlError(f"kernel tree file of another format (this oirl-fast reads format {FOREST_FORMAT})", path)
    try:
        return ForestDescription(**header, **arrays)
    except TypeError as exc:
        raise OirlError(f"unreadable kernel tree file ({exc})", path) from None
