"""Compile a trained reward model (LightGBM / XGBoost binary classifier) to a native .so.

Pipeline: model file -> treelite frontend -> tl2cgen C code -> gcc -> shared library,
renamed atomically onto the target path, then loaded with :class:`CompiledPredictor`.

Exactness notes (measured with lightgbm 4.7, xgboost 3.2, treelite 4.8.1, tl2cgen 1.0.0;
tests/test_compile.py checks them):

* LightGBM stores float64 thresholds and leaf values; treelite keeps both as float64, so the
  generated code compares in double precision, like LightGBM itself. XGBoost models come out
  as float32 thresholds / float32 leaves (XGBoost works in float32 internally).
* tl2cgen 1.0.0 silently casts a DMatrix whose dtype differs from the model's threshold type.
  We do not rely on that: :meth:`CompiledPredictor.predict` always hands tl2cgen a DMatrix
  whose dtype equals the threshold type (float32 -> float64 is exact; float64 -> float32 is
  what XGBoost does to its own input). Result: LightGBM predictions equal ``booster.predict``
  bit for bit; XGBoost ones agree to ~2e-7 (float32 summation order).
* tl2cgen <= 1.0.0 bug (fixed upstream in dmlc/tl2cgen PR #49, after 1.0.0): for float64
  models the generated ``union Entry { int missing; double fvalue; }`` tests ``missing != -1``
  on the *low 32 bits* of the double, so a finite float64 input whose low 32 mantissa bits
  are all ones is taken for a missing value (it then follows the default branch: for our
  LightGBM models, the branch 0.0 would take). Values widened from float32 can never look
  like that (their low 29 mantissa bits are zero), so float32 features -- ours -- are safe.
  LightGBM's own negative thresholds often have exactly that bit pattern (they are
  ``nextafter(midpoint, +inf)``), so float64 input sitting on a threshold hits it. For
  float64 input we move such values one ulp towards -inf, which keeps every comparison
  with LightGBM-made thresholds (see :func:`_clear_missing_lookalikes`).
* LightGBM scores any input with ``|x| <= 1e-35f`` (its kZeroThreshold) as 0.0, and its
  trees do split at exactly -1e-35f (the zero bin's edge); the generated code compares the raw
  value, so an input of exactly -1e-35f would branch differently. ``predict`` zeroes such
  tiny values for float64-threshold (= LightGBM) models first.
* NaN: tl2cgen treats NaN as missing and takes the default branch; that matches both native
  libraries (LightGBM trained without NaN maps NaN to 0.0, XGBoost uses the learned default
  direction). Our embeddings never contain NaN or inf, so :meth:`CompiledPredictor.predict`
  rejects non-finite input as an upstream bug instead of scoring it.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from ..atomic import atomic_path
from ..errors import OirlError
from .model_format import import_treelite, load_treelite_model, zero_tiny

# Each translation unit gets about this many trees. gcc -O3 slows down more than linearly
# with function size, so many small units compile faster in total CPU time, not just in
# wall time (see compile_library's docstring for the measurements).
TREES_PER_UNIT = 5
MAX_UNITS = 64

# Lines the bundled treelite (4.1.2 inside tl2cgen 1.0.0) writes straight to fd 2 when it
# deserializes a model saved by the newer standalone treelite. Harmless; filtered out.
_VERSION_NOISE = (
    "originated from a newer Treelite version",
    "Currently running Treelite version",
    "The model checkpoint was generated from Treelite version",
)


@contextlib.contextmanager
def _quiet_native(verbose: bool) -> Iterator[None]:
    """Silence tl2cgen's info chatter and the treelite version notice, keep everything else.

    tl2cgen's info log goes through Python ``print`` (stdout); the version notice comes from
    C++ straight to file descriptor 2. We catch fd 2 in a temporary file and replay every line
    that is not the known version notice, so real diagnostics still reach the user. Errors are
    exceptions and pass through untouched.
    """
    if verbose:
        yield
        return
    sys.stderr.flush()
    try:
        saved_fd = os.dup(2)
    except OSError:  # no usable fd 2 (unusual embedding): just silence stdout
        with contextlib.redirect_stdout(io.StringIO()):
            yield
        return
    with tempfile.TemporaryFile(mode="w+b") as captured:
        try:
            os.dup2(captured.fileno(), 2)
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*newer Treelite version.*")
                yield
        finally:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            kept = [ln for ln in text.splitlines() if ln.strip() and not any(n in ln for n in _VERSION_NOISE)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()


def _parallel_units(num_tree: int) -> int:
    return max(1, min(MAX_UNITS, -(-num_tree // TREES_PER_UNIT)))


def compile_library(
    model_file: Path, backend: str, lib_path: Path, nthread: int = 2, verbose: bool = False
) -> Path:
    """Compile ``model_file`` to a shared library at ``lib_path``; return ``lib_path``.

    The library is built in a temporary file beside ``lib_path`` and renamed onto it only
    when gcc succeeded, so a crash never leaves a half-written .so, and a process that has
    the old library loaded keeps a valid mapping (a new inode replaces the path).

    Compile settings (``nthread`` gcc processes, default 2):

    * ``parallel_comp`` = one translation unit per ~5 trees, at most 64. gcc -O3 time grows
      faster than linearly with function size, so splitting cuts total gcc CPU time, not
      only wall time. Measured for LightGBM, 300 trees x 63 leaves on 768 features, gcc 12,
      2 cores shared with other jobs (so +-50%), total gcc CPU seconds: parallel_comp 1 ->
      ~61, 2 -> ~72, 8 -> ~23-46, 32 -> ~19-34, 64 -> ~17-29. With this rule (60 units):
      ~11-12 s wall at load ~3, ~48 s at load 7. 60 trees x 63 leaves (12 units): ~4 s
      at load ~3, ~10 s at load 7; XGBoost 60 trees of depth 6: about the same.
    * ``quantize`` off: predictions stay exact with it, but it cost ~10% more gcc time and
      gave slower prediction code here.
    * gcc -O3 (tl2cgen's default) kept: -O1/-O2 compile ~30% faster at the same
      parallel_comp but predicted ~30% slower (2000 rows: ~80 ms vs ~62 ms, one thread);
      the .so is built once and then scores every query.
    """
    _, tl2cgen = import_treelite()
    model_file, lib_path = Path(model_file), Path(lib_path)
    model = load_treelite_model(model_file, backend)
    params = {"parallel_comp": _parallel_units(model.num_tree)}
    try:
        with atomic_path(lib_path) as tmp:
            with _quiet_native(verbose):
                tl2cgen.export_lib(
                    model, toolchain="gcc", libpath=tmp, params=params,
                    nthread=max(1, int(nthread)), verbose=verbose,
                )
    except OirlError:
        raise
    except ValueError as exc:  # tl2cgen's toolchain check: gcc missing
        raise OirlError(f"cannot compile {model_file}: {exc}", lib_path) from exc
    except Exception as exc:  # TL2cgenError from codegen or gcc, OSError writing the .so
        raise OirlError(f"compiling {model_file} failed: {exc}", lib_path) from exc
    return lib_path


class CompiledPredictor:
    """Probabilities from a library built by :func:`compile_library`.

    ``predict`` matches ``Booster.predict`` (LightGBM, exact) and ``Booster.predict`` /
    ``predict_proba[:, 1]`` (XGBoost ``binary:logistic``, to float32 rounding).
    """

    def __init__(self, lib_path: Path, nthread: int = 2, sha256: str | None = None):
        _, tl2cgen = import_treelite()
        self.lib_path = Path(lib_path)
        self.nthread = max(1, int(nthread))
        if not self.lib_path.is_file():
            raise OirlError("compiled model library not found (run the compile step)", self.lib_path)
        try:
            self._predictor = _load_unshared(
                self.lib_path, lambda p: tl2cgen.Predictor(p, nthread=self.nthread), sha256
            )
            self.num_feature = int(self._predictor.num_feature)
            self.threshold_type = str(self._predictor.threshold_type)
            num_class = np.asarray(self._predictor.num_class).reshape(-1)
        except OirlError:
            raise
        except Exception as exc:  # dlopen failure, missing symbols: corrupt or foreign file
            raise OirlError(f"not a loadable compiled model library: {exc}", self.lib_path) from exc
        if int(self._predictor.num_target) != 1 or num_class.tolist() != [1]:
            raise OirlError("compiled model is not a binary classifier", self.lib_path)
        if self.threshold_type not in ("float32", "float64"):
            raise OirlError(f"unsupported threshold type {self.threshold_type!r}", self.lib_path)
        self._dtype = np.dtype(self.threshold_type)
        self._dmatrix = tl2cgen.DMatrix

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Score rows of ``X`` (n, num_feature), float32 or float64 -> (n,) float64 probabilities."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.num_feature:
            raise OirlError(
                f"features have shape {X.shape}, model expects (n, {self.num_feature})", self.lib_path
            )
        n = X.shape[0]
        if n == 0:
            return np.empty(0, dtype=np.float64)
        if X.dtype not in (np.float32, np.float64):
            X = X.astype(np.float64)
        finite = np.isfinite(X)
        if not finite.all():
            row = int(np.flatnonzero(~finite.all(axis=1))[0])
            raise OirlError(f"features contain NaN or inf (first in row {row})", self.lib_path)
        # DMatrix dtype == model threshold type; C order so tl2cgen makes no copy of its own.
        src_dtype = X.dtype
        X = np.ascontiguousarray(X, dtype=self._dtype)
        if self._dtype == np.float64:  # float64 thresholds: a LightGBM model
            X = zero_tiny(X)
            if src_dtype == np.float64:  # widened float32 can't look like the marker
                X = _clear_missing_lookalikes(X)
        out = self._predictor.predict(self._dmatrix(X))
        return np.asarray(out, dtype=np.float64).reshape(n)


def _load_unshared(lib_path: Path, load, sha256: str | None = None):
    """Call ``load`` on a private hard link (or copy) of ``lib_path``, then remove the link.

    The dynamic loader caches libraries by path: while one predictor keeps ``model.so``
    loaded, a second ``dlopen("model.so")`` returns the *old* code even after
    :func:`compile_library` replaced the file. A unique name per load avoids that; the
    mapping survives the unlink. The link goes to a temporary folder, never beside the
    library: loading a model does not write to its folder. Falls back to the path itself
    if no temporary copy can be made.
    """
    with tempfile.TemporaryDirectory(prefix="oirl-lib-") as tmp:
        link = Path(tmp) / f"{lib_path.stem}-{os.getpid()}-{uuid.uuid4().hex[:12]}.so"
        try:
            try:
                os.link(lib_path, link)
            except OSError:  # another file system
                shutil.copyfile(lib_path, link)
        except OSError:
            link = lib_path
        # checked on the very file dlopen maps: a library replaced after its check is refused, not loaded
        if sha256 is not None and _sha256(link) != sha256:
            raise OirlError("compiled model library does not match its checksum (changed while loading); "
                            "run again to rebuild it", lib_path)
        return load(link)


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _clear_missing_lookalikes(X: np.ndarray) -> np.ndarray:
    """Move float64 values whose low 32 bits are all ones one ulp towards -inf.

    tl2cgen 1.0.0 reads those bits as its ``missing == -1`` marker (see module docstring).
    Why -inf and not towards zero: LightGBM thresholds are ``nextafter(midpoint, +inf)`` of
    two neighbouring float32 feature values, so a negative threshold's low 28 bits are all
    ones, and in 1 case of 8 its whole low word: it *is* a look-alike. An input equal to it
    must go left (``x <= t``), and ``nextafter(x, -inf)`` still does. The result changes only
    if a threshold equals ``x - 1 ulp`` exactly (low word 0x00000000 for negative x,
    0xFFFFFFFE for positive x), which those thresholds do not have, except for midpoints of
    float32 values of very different magnitude. Returns ``X`` itself when nothing needs it
    (always so for float32-derived data).
    """
    bits = X.view(np.uint64)
    low = np.uint64(0xFFFFFFFF)
    bad = (bits & low) == low
    if not bad.any():
        return X
    X = X.copy()
    X[bad] = np.nextafter(X[bad], -np.inf)
    return X
