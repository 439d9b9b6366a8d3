"""oirl-fast: query-dependent prompt optimization from offline logs (Prompt-OIRL).

The Python API (see :mod:`oirl_fast.api`)::

    import oirl_fast as oirl
    model = oirl.load("oirl-study/gsm8k/model")            # or oirl.fit(log, out=...)
    picks = model.pick(["question 1", "question 2"], top_k=3)
    report = oirl.evaluate(model, "oirl-study/gsm8k/logs.parquet")
    result = oirl.rerank("oirl-study/mawps/logs.parquet", folds=5)   # cross-fitted picks of every question

``import oirl_fast`` stays light: the API and its libraries (pyarrow, lightgbm, torch, numba)
are imported on first use of one of these names.
"""
__version__ = "0.1.0"

_API = ("Model", "Picks", "load", "fit", "evaluate", "read_log", "rerank")
__all__ = [*_API, "OirlError", "__version__"]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    if name == "OirlError":
        from .errors import OirlError

        return OirlError
    raise AttributeError(f"module 'oirl_fast' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
