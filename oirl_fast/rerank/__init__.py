"""Re-rank a whole logged benchmark honestly: grouped K-fold cross-fitted picks, candidate models compared in
the same folds, abstention to the best fixed prompt, and the report (``oirl rerank``, ``oirl.rerank``).

Modules: :mod:`.folds` (units and grouped folds), :mod:`.candidates` (the models), :mod:`.selection`
(picks, best fixed prompt, margins), :mod:`.crossfit` (the outer and inner folds), :mod:`.report`
(figures, table, plot), :mod:`.fallback` (the margin a model artifact carries), :mod:`.run` (the entry point).
"""
from .run import RerankResult, rerank

__all__ = ["RerankResult", "rerank"]


class _CallableModule(type(__import__("sys"))):
    """``oirl_fast.rerank`` is both this package and the public function ``oirl.rerank``: importing the package
    binds it as the attribute ``rerank`` of ``oirl_fast``, hiding the function, so the package is callable too."""

    def __call__(self, *args, **kwargs) -> RerankResult:
        return rerank(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
