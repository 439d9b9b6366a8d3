"""Re-rank a whole logged benchmark honestly: grouped K-fold cross-fitted picks, candidate models compared in
the same folds, abstention to the best fixed prompt, and the report (``oirl rerank``; the public function is
``oirl.rerank``, in :mod:`oirl_fast.api`).

Modules: :mod:`.folds` (units and grouped folds), :mod:`.candidates` (the models), :mod:`.selection`
(picks, best fixed prompt, margins), :mod:`.crossfit` (the outer and inner folds), :mod:`.report`
(figures, table, plot), :mod:`.fallback` (the margin a model artifact carries; ``oirl score`` imports it,
so this package imports nothing heavy until :func:`.run.rerank` is used), :mod:`.run` (the entry point).

Named ``reranking``, not ``rerank``, so that importing it never hides the function ``oirl_fast.rerank``.
"""
