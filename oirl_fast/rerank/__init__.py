"""Re-rank a whole logged benchmark honestly: grouped K-fold cross-fitted picks, candidate models compared in
the same folds, abstention to the best fixed prompt, and the report (``oirl rerank``, ``oirl.rerank``).

Modules: :mod:`.folds` (units and grouped folds), :mod:`.candidates` (the models), :mod:`.selection`
(picks, best fixed prompt, margins), :mod:`.crossfit` (the outer and inner folds), :mod:`.report`
(figures, table, plot), :mod:`.fallback` (the margin a model artifact carries; ``oirl score`` imports it,
so this package imports nothing heavy until :func:`rerank` is used), :mod:`.run` (the entry point).
"""
import sys as _sys
import types as _types

__all__ = ["RerankResult", "rerank"]


def rerank(*args, **kwargs):
    """:func:`oirl_fast.rerank.run.rerank`."""
    from .run import rerank as run

    return run(*args, **kwargs)


def __getattr__(name: str):
    if name == "RerankResult":
        from .run import RerankResult

        return RerankResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _CallableModule(_types.ModuleType):
    """``oirl_fast.rerank`` is both this package and the public function ``oirl.rerank``: importing the package
    binds it as the attribute ``rerank`` of ``oirl_fast``, hiding the function, so the package is callable too."""

    def __call__(self, *args, **kwargs):
        return rerank(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
