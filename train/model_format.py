"""Facts about the reward model's file formats, in one place.

* the backends and the native model file each writes (``MODEL_FILES``);
* LightGBM's zero-threshold input rule (``zero_tiny``), which the kernel and the compiled
  library both apply so that they score exactly like LightGBM;
* reading a model file through treelite (``load_treelite_model``), the reader every scoring
  route and the compile step share;
* the identity of a compiled library: where it lives in the artifact and what it was built
  with (``library_record``, ``library_identity``).
"""
from __future__ import annotations

import platform
import warnings
from pathlib import Path

import numpy as np

from ..errors import OirlError
from ..extras import require

BACKENDS = ("lightgbm", "xgboost")
MODEL_FILES = {"lightgbm": "model.lgb.txt", "xgboost": "model.xgb.json"}
LIBRARY_FILE = "compiled/model.so"

# LightGBM's kZeroThreshold (1e-35f widened to double): its C API drops input values with
# |x| <= this, i.e. scores them as 0.0, and its trees often split exactly at -kZeroThreshold.
LIGHTGBM_ZERO_THRESHOLD = float(np.float32(1e-35))


def zero_tiny(X: np.ndarray, threshold: float = LIGHTGBM_ZERO_THRESHOLD) -> np.ndarray:
    """Replace 0 < |x| <= threshold by 0.0 (LightGBM's input rule); returns X itself when nothing changes."""
    if threshold <= 0:
        return X
    tiny = np.abs(X) <= threshold
    if not tiny.any():  # fast path: no zeros at all (dense embeddings)
        return X
    tiny &= X != 0
    if not tiny.any():
        return X
    return np.where(tiny, X.dtype.type(0), X).astype(X.dtype, copy=False)


def import_treelite():
    """Import treelite and tl2cgen, turning an import failure into a user-facing error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl2cgen = require("tl2cgen", "compiling or reading a native model file")
        treelite = require("treelite", "compiling or reading a native model file")
    return treelite, tl2cgen


def read_treelite(model_file: Path, backend: str):
    """A model file as a ``treelite.Model``, whatever its objective (the kernel takes any); OirlError if unreadable."""
    treelite, _ = import_treelite()
    model_file = Path(model_file)
    if backend not in BACKENDS:
        raise OirlError(f"unknown model backend {backend!r}; expected one of {', '.join(BACKENDS)}", model_file)
    if not model_file.is_file():
        raise OirlError(f"{backend} model file not found", model_file)
    try:
        if backend == "lightgbm":
            return treelite.frontend.load_lightgbm_model(model_file)
        return treelite.frontend.load_xgboost_model(model_file, format_choice="inspect")
    except Exception as exc:  # TreeliteError, ValueError from format detection, ...
        raise OirlError(f"cannot read as a {backend} model: {exc}", model_file) from exc


def load_treelite_model(model_file: Path, backend: str):
    """Parse a saved reward model into a ``treelite.Model``, checking it outputs probabilities.

    ``backend`` is ``"lightgbm"`` (LightGBM text model file) or ``"xgboost"`` (XGBoost JSON
    model file; UBJSON is detected and accepted too). The model must be a binary classifier
    with a sigmoid output (LightGBM ``objective=binary``, XGBoost ``binary:logistic``), since
    every scoring route promises probabilities.
    """
    model = read_treelite(model_file, backend)
    header = model.get_header_accessor()
    postprocessor = str(header.get_field("postprocessor"))
    num_target = int(np.asarray(header.get_field("num_target")).reshape(-1)[0])
    num_class = [int(c) for c in np.asarray(header.get_field("num_class")).reshape(-1)]
    if postprocessor != "sigmoid" or num_target != 1 or num_class != [1]:
        raise OirlError(
            f"not a binary classifier with sigmoid output (postprocessor={postprocessor!r}, "
            f"num_target={num_target}, num_class={num_class}); train with "
            + ("objective=binary" if backend == "lightgbm" else "objective=binary:logistic"),
            model_file,
        )
    return model


def platform_tag() -> str:
    return f"{platform.system()}-{platform.machine()}-py{platform.python_version()}"


def library_identity() -> dict:
    """What a compiled library must have been built with to load here."""
    treelite, tl2cgen = import_treelite()
    return {"platform": platform_tag(), "tl2cgen": tl2cgen.__version__, "treelite": treelite.__version__}


def library_record(seconds: float) -> dict:
    """manifest.json's ``compiled_library`` entry for a library just built in ``seconds``."""
    return {"file": LIBRARY_FILE, **library_identity(), "compile_seconds": round(seconds, 2)}
