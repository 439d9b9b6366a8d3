"""The public Python API: load or train a reward model, pick prompts for queries, evaluate.

>>> import oirl_fast as oirl
>>> model = oirl.load("oirl-study/gsm8k/model")          # doctest: +SKIP
>>> picks = model.pick(["question 1", "question 2"], top_k=3)   # doctest: +SKIP
>>> picks.ids.shape, picks.scores.dtype                   # doctest: +SKIP
((2, 3), dtype('float32'))

:func:`load` reads and checks a model artifact and nothing else: it embeds, compiles and
writes nothing. The embedder the model was trained with is built on the first
:meth:`Model.embed` or :meth:`Model.pick` of texts, the scorer on the first
:meth:`Model.scores` or :meth:`Model.pick`. Every mistake a caller can make (an empty
list, embeddings of the wrong shape or dtype, ``top_k`` larger than the prompt set) raises
:class:`~oirl_fast.errors.OirlError` with one line saying what is wrong.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import pyarrow as pa

from .embed import ZERO_VECTOR, Embedder, embedder_for_artifact, empty_text_reason, zero_rows
from .encoders import EncoderSettings, make_encoder
from .errors import OirlError
from .locks import locks_output
from .evaluation import check_evaluable, evaluate_per_dataset
from .evaluation import evaluate as evaluate_artifact
from .multilog import read_log_set
from .paths import Output, check_paths
from .splits import Protocol
from .train.artifact import Artifact, load_artifact
from .train.fit import check_trainable, fit_reward_model, trainable_split, write_artifact
from .train.reward_model import TrainConfig

if TYPE_CHECKING:  # the scorer's import brings numba; it is built on first use
    from .scoring.scorer import Scorer

__all__ = ["Model", "Picks", "load", "fit", "evaluate", "read_log", "rerank"]

def _quiet(_message: str) -> None:
    pass


# --------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Picks:
    """The ``k`` best prompts of each of ``n`` queries, best first.

    ``indices`` int64 (n, k): rows of the model's prompt set (:attr:`Model.prompt_ids`);
    ``ids`` and ``texts`` object (n, k) of str: those prompts' ids and texts;
    ``scores`` float32 (n, k): the reward model's probability that the prompt's answer is right;
    ``queries``: the n query texts, or None when the queries came as embeddings.
    """

    indices: np.ndarray
    ids: np.ndarray
    texts: np.ndarray
    scores: np.ndarray
    queries: list[str] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def top_k(self) -> int:
        return self.indices.shape[1]

    def to_arrow(self) -> pa.Table:
        """One row per (query, rank), n * k rows: ``query_index`` int64, ``query`` string (when the queries
        were texts), ``rank`` int32 (1 = best), ``prompt_index`` int64, ``prompt_id`` string, ``prompt``
        string, ``score`` float32."""
        n, k = self.indices.shape
        columns = {"query_index": pa.array(np.repeat(np.arange(n, dtype=np.int64), k))}
        if self.queries is not None:
            columns["query"] = pa.array(np.repeat(np.asarray(self.queries, dtype=object), k), pa.string())
        columns.update(
            rank=pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), n)),
            prompt_index=pa.array(self.indices.ravel()),
            prompt_id=pa.array(self.ids.ravel(), pa.string()),
            prompt=pa.array(self.texts.ravel(), pa.string()),
            score=pa.array(self.scores.ravel()),
        )
        return pa.table(columns)

    def to_pandas(self):
        """:meth:`to_arrow` as a pandas DataFrame (needs pandas)."""
        return self.to_arrow().to_pandas()


# --------------------------------------------------------------------------------------
# The model


class Model:
    """A trained reward model r(query, prompt) over its prompt set; get one with :func:`load` or :func:`fit`.

    ``cache_dir``: embedding cache (default ``$OIRL_CACHE_DIR`` or ``~/.cache/oirl-fast``);
    ``device``: where to embed and score (auto, cpu or cuda); ``progress``: progress bars while embedding;
    ``log_fn``: receives one-line messages (e.g. that the static embedder is being built).
    """

    def __init__(self, artifact: Artifact, *, cache_dir: str | Path | None = None, device: str = "auto",
                 batch_size: int = 128, progress: bool = False, log_fn: Callable[[str], None] | None = None):
        self.artifact = artifact
        self.cache_dir = cache_dir
        self.device = device
        self.batch_size = batch_size
        self.progress = progress
        self.log_fn = log_fn or _quiet
        self._embedder: Embedder | None = None
        self._scorer = None
        self._scoring = None

    def __repr__(self) -> str:
        meta = self.artifact.metadata
        return (f"Model({str(self.path)!r}, dataset={meta.dataset!r}, backend={meta.backend!r}, "
                f"prompts={self.n_prompts}, embedding_dim={self.embedding_dim})")

    @property
    def path(self) -> Path:
        """The artifact folder."""
        return self.artifact.path

    @property
    def prompt_ids(self) -> list[str]:
        """The P prompt ids, in the order of the columns of :meth:`scores`."""
        return self.artifact.metadata.prompt_ids

    @property
    def prompt_texts(self) -> list[str]:
        """The P prompt texts, same order as :attr:`prompt_ids`."""
        return [str(p["text"]) for p in self.artifact.metadata.prompts]

    @property
    def n_prompts(self) -> int:
        return len(self.artifact.metadata.prompts)

    @property
    def embedding_dim(self) -> int:
        """d, the width of a query embedding."""
        return int(self.artifact.metadata.feature_layout["query_dim"])

    @property
    def embedder(self) -> Embedder:
        """The embedder the model was trained with, built on first use (the static one the artifact carries; an
        artifact without it: built in the cache, a first static build takes a while)."""
        if self._embedder is None:
            self._embedder = embedder_for_artifact(self.artifact.metadata,
                                                   EncoderSettings(self.cache_dir, self.device, self.batch_size),
                                                   progress=self.progress,
                                                   where=self.path / "metadata.json", log=self.log_fn,
                                                   stored=self.artifact.embedder_folder)
        return self._embedder

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (n, d) embeddings of ``texts`` (a list of n strings) with the model's embedder, through the
        embedding cache."""
        return self.embedder.embed(_texts(texts, "texts"))

    def scores(self, query_embeddings: np.ndarray, dtype=np.float32) -> np.ndarray:
        """float32 (n, P) (or ``dtype``): the probability that each of the P prompts answers each query right.

        ``query_embeddings``: float32 (n, d), n >= 1, d = :attr:`embedding_dim`, from :meth:`embed`
        (or the same embedder). Columns follow :attr:`prompt_ids`."""
        return self._get_scorer().scores(self._check_embeddings(query_embeddings), dtype=dtype)

    def pick(self, queries: Sequence[str] | np.ndarray, top_k: int = 1, fallback: bool = True) -> Picks:
        """The ``top_k`` best prompts for each query, best first (ties go to the earlier prompt).

        ``queries``: a list of n query texts (embedded with the model's embedder), or their float32
        (n, d) embeddings. ``top_k``: 1 <= top_k <= P. ``fallback``: apply the model's abstention rule
        (``metadata.fallback``, from ``oirl train --fallback-margin``) as ``oirl score`` does: the fixed
        prompt goes first wherever the top pick's score does not clear it by the margin, or, for the
        near-duplicate vote, the vote's prompt goes first (the fixed prompt for a query without training
        near-duplicates); no-op for a model without one. Returns :class:`Picks` with (n, top_k) arrays."""
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)):
            raise OirlError(f"top_k must be an integer, got {type(top_k).__name__}")
        if not 1 <= top_k <= self.n_prompts:
            raise OirlError(f"top_k must be between 1 and the model's {self.n_prompts} prompts, got {top_k}")
        if isinstance(queries, np.ndarray):
            texts, emb = None, self._check_embeddings(queries)
        else:
            texts = _texts(queries, "queries")
            for i, t in enumerate(texts):
                why = empty_text_reason(t)
                if why:
                    raise OirlError(f"queries[{i}] {why}: no question to pick a prompt for")
            # looked up in the embedding cache but not added to it, as `oirl score` does: one
            # shard per call would leave a shard per pick
            emb = self.embedder.embed(texts, add=False)
            empty = np.flatnonzero(zero_rows(emb))
            if len(empty):
                raise OirlError(f"queries[{int(empty[0])}] {ZERO_VECTOR}: no question to pick a prompt for")
        # the same Scoring `oirl score` runs: scorer, top k and the model's pick policy
        picked = self._get_scoring().pick(emb, int(top_k), dtype=np.float32, policy=fallback)
        idx = picked.idx
        ids = np.asarray(self.prompt_ids, dtype=object)
        prompts = np.asarray(self.prompt_texts, dtype=object)
        return Picks(indices=idx, ids=ids[idx], texts=prompts[idx], scores=picked.scores, queries=texts)

    def _get_scoring(self):
        """The :class:`oirl_fast.scoring.job.Scoring` of this model over its own prompts, built on first use."""
        if self._scoring is None:
            from .scoring.candidates import model_candidates
            from .scoring.job import Scoring
            from .scoring.options import ScoreOptions

            scorer = self._get_scorer()
            self._scoring = Scoring(self.artifact, model_candidates(self.artifact), scorer,
                                    ScoreOptions(device=self.device), lambda cached: self.embedder)
        return self._scoring

    def _get_scorer(self) -> "Scorer":
        """The scoring core (:class:`oirl_fast.scoring.scorer.Scorer`), built on first use: its
        import brings numba, which ``load`` does not need."""
        if self._scorer is None:
            from .scoring.scorer import Scorer

            self._scorer = Scorer.for_artifact(self.artifact, device=self.device)
        return self._scorer

    def _check_embeddings(self, emb) -> np.ndarray:
        if not isinstance(emb, np.ndarray):
            raise OirlError(f"query embeddings must be a numpy array, float32 (n, {self.embedding_dim}); "
                            f"got {type(emb).__name__}")
        if emb.dtype != np.float32:
            raise OirlError(f"query embeddings must be float32, got {emb.dtype} (convert with .astype(np.float32))")
        if emb.ndim != 2 or emb.shape[1] != self.embedding_dim:
            raise OirlError(f"query embeddings have shape {emb.shape}, the model expects (n, {self.embedding_dim})")
        if emb.shape[0] == 0:
            raise OirlError("no query embeddings (shape (0, d)); give at least one query")
        if not np.isfinite(emb).all():
            raise OirlError("query embeddings contain NaN or inf")
        return np.ascontiguousarray(emb)


def _texts(texts, what: str) -> list[str]:
    """``texts`` as a non-empty list of str, or an OirlError saying what is wrong."""
    if isinstance(texts, str):
        raise OirlError(f"{what} must be a list of strings, got one string; wrap it in a list: [text]")
    try:
        texts = list(texts)
    except TypeError:
        raise OirlError(f"{what} must be a list of strings, got {type(texts).__name__}") from None
    if not texts:
        raise OirlError(f"{what} is empty; give at least one text")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise OirlError(f"{what}[{i}] is {type(t).__name__}, not a string")
    return texts


# --------------------------------------------------------------------------------------
# Entry points


def load(path: str | Path, *, cache_dir: str | Path | None = None, device: str = "auto",
         batch_size: int = 128, progress: bool = False, log_fn: Callable[[str], None] | None = None) -> Model:
    """Load the model artifact at ``path`` (a folder written by :func:`fit` or ``oirl train``).

    Checks the artifact's checksums and schema (OirlError naming the file otherwise); embeds,
    compiles and writes nothing."""
    path = Path(path)
    if not path.is_dir():
        raise OirlError("model artifact folder not found", path)
    return Model(load_artifact(path), cache_dir=cache_dir, device=device, batch_size=batch_size, progress=progress,
                 log_fn=log_fn)


def read_log(log) -> tuple[pa.Table, str | None]:
    """(log table, its name for error messages) from a table, a log file or folder, or a list of them."""
    if isinstance(log, pa.Table):
        return log, None
    paths = [log] if isinstance(log, (str, Path)) else list(log)
    if not paths:
        raise OirlError("no log given")
    return read_log_set(paths), ", ".join(str(p) for p in paths)


@locks_output(lambda a: a["out"])
def fit(
    log,
    out: str | Path,
    *,
    protocol: str = "grouped",
    heldout_dataset: str | None = None,
    test_fraction: float = 0.25,
    backend: str = "lightgbm",
    n_estimators: int = 300,
    learning_rate: float = 0.05,
    seed: int = 0,
    embedder: str = "static",
    fallback_margin: float | str | None = None,
    compile: bool = True,
    cache_dir: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
    log_fn: Callable[[str], None] | None = None,
) -> Model:
    """Fit a reward model on a log's training side and write it as a model artifact at ``out`` (``oirl train``).

    (Named ``fit``, not ``train``: ``oirl_fast.train`` is the training subpackage.)

    ``log``: a log table, a log file (.parquet or .jsonl) or folder, or a list of them (one model over
    several logs). ``protocol``: grouped, published or leave-one-dataset-out (with ``heldout_dataset``).
    ``embedder``: static, minilm or a sentence-transformers folder. ``compile``: also build the native
    library (treelite + tl2cgen). ``out`` is replaced atomically; it must be new, empty or a model artifact.
    A log no model can learn from is refused before the embedder is built. ``log_fn`` receives one-line
    progress messages. ``fallback_margin``: also store the abstention rule ``oirl score`` applies
    (:mod:`oirl_fast.reranking.fallback`): keep the prompt best on the training rows unless the pick's score beats
    it by more than this margin; ``"auto"`` chooses the margin by cross-fitting on the training side only;
    ``"vote"`` stores the near-duplicate vote instead (:mod:`oirl_fast.reranking.neighbours`, ``oirl rerank``'s
    default policy): switch only for a query with training near-duplicates, to the prompt that won on them.
    Returns the written model, loaded."""
    from .reranking.fallback import describe as describe_fallback, fallback_for_split, parse_margin

    say = log_fn or _quiet
    margin = parse_margin(fallback_margin)
    config = TrainConfig(backend=backend, n_estimators=n_estimators, learning_rate=learning_rate, seed=seed)
    proto = Protocol(protocol, test_fraction=test_fraction, seed=seed, heldout_dataset=heldout_dataset)
    inputs = {} if isinstance(log, pa.Table) else {"log": log}
    check_paths({**inputs, "cache_dir": cache_dir}, [Output(Path(out), "out", kind="artifact")])
    table, source = read_log(log)
    # Cut and checked before the embedder is built: a first static build takes a while.
    split = trainable_split(table, proto, source)
    encoder = make_encoder(embedder, cache_dir, device, log=say)
    emb = Embedder(cache_dir=cache_dir, progress=progress, encoder=encoder)
    fitted = fit_reward_model(table, proto, config, emb, say, source, split=split)
    if margin is not None:
        fitted.metadata.fallback, fitted.neighbours = fallback_for_split(split, emb, fitted.prompt_embeddings, config,
                                                                         margin, seed)
        say(f"  fallback: {describe_fallback(fitted.metadata.fallback)}")
    artifact = write_artifact(fitted, out, compile_library=compile)
    model = Model(artifact, cache_dir=cache_dir, device=device, progress=progress, log_fn=log_fn)
    model._embedder = emb  # the same encoder the artifact records
    return model


def evaluate(model: Model | str | Path, log, *, seeds: int = 1, knn_k: int = 50, per_dataset: bool = True,
             progress: bool = True) -> dict:
    """Offline evaluation of ``model`` on the held-out queries of ``log`` (the log(s) it was trained from;
    the split is rebuilt with the model's protocol).

    Returns the JSON-ready report of :func:`oirl_fast.evaluation.evaluate`: reward-model metrics, best-of-N
    against the best single prompt, random, oracle and kNN with paired-bootstrap CIs, leakage counts. ``seeds``
    > 1 refits the model with seeds 1..K-1 on the same split for the seed mean and spread. A model trained on
    several datasets also gets ``per_dataset``: the report of each dataset's test queries."""
    if not isinstance(model, Model):
        model = load(model, progress=progress)
    if isinstance(seeds, bool) or not isinstance(seeds, (int, np.integer)) or seeds < 1:
        raise OirlError(f"seeds must be an integer >= 1, got {seeds!r}")
    artifact = model.artifact
    table, source = read_log(log)
    protocol, split, _, _ = check_evaluable(artifact, table, source)  # before the embedder and the seed fits
    embedder = model.embedder
    if seeds > 1:
        check_trainable(split, source)
    others = [fit_reward_model(table, protocol, replace(artifact.model.config, seed=s), embedder, _quiet, source,
                               split=split).model
              for s in range(1, seeds)]
    report = evaluate_artifact(artifact, table, embedder, knn_k=knn_k, seed_models=others, source=source)
    if per_dataset:
        by_dataset = evaluate_per_dataset(artifact, table, embedder, knn_k=knn_k, seed_models=others)
        if by_dataset:
            report["per_dataset"] = by_dataset
    return report



def rerank(logs, *, folds: int = 5, seed: int = 0, seeds: int = 1, top_k: int = 3, **options):
    """Cross-fitted best-of-N picks for every logged question of ``logs`` and the report on them
    (``oirl rerank``): see :func:`oirl_fast.reranking.run.rerank` for ``options`` (inner_folds, candidates,
    knn_k, fast, nthread, embedder, cache_dir, progress, ...). Returns a
    :class:`~oirl_fast.reranking.run.RerankResult`: ``.records()`` one dict per question, ``.report`` the figures,
    ``.write_picks(path)``."""
    from .reranking.run import rerank as run

    return run(logs, folds=folds, seed=seed, seeds=seeds, top_k=top_k, **options)
