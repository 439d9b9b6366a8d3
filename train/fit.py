"""Fit a reward model on a log's training side and write it as a model artifact.

``fit_reward_model(table, protocol, config, embedder)`` -> :class:`FittedModel`;
``write_artifact(fitted, out_dir)`` -> :class:`~oirl_fast.train.artifact.Artifact`;
``train_artifact`` does both. The split comes from :func:`oirl_fast.splits.split_log`,
so training and evaluation cut a log the same way. A caller that must refuse a bad log
before slow work (building an embedder) splits it once with :func:`trainable_split` and
passes the result on as ``split=``, so the log is not cut a second time.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..embed import Embedder
from ..encoders import encoder_record
from ..errors import OirlError
from ..features import FeatureLayout, pair_features
from ..schema import question_hashes
from ..splits import Outcomes, Protocol, SplitLog, pool, split_log
from .artifact import Artifact, ModelMetadata, embeddings_hash, load_artifact, save_artifact
from .reward_model import RewardModel, TrainConfig


def _dataset_name(table: pa.Table) -> str:
    names = pc.unique(table.column("dataset")).to_pylist()
    return names[0] if len(names) == 1 else "+".join(sorted(names))


def training_examples(outcomes: Outcomes, query_emb: np.ndarray, prompt_emb: np.ndarray):
    """(X float32 (k, d), y float (k,), weight float (k,), groups (k,)) over logged (unit, prompt) cells."""
    u, p = np.nonzero(outcomes.count > 0)
    X = pair_features(query_emb, prompt_emb, u, p)
    return X, outcomes.rate[u, p], outcomes.count[u, p].astype(np.float64), np.asarray(outcomes.groups)[u]


@dataclass
class FittedModel:
    """A reward model fitted on one split, before it is written as an artifact."""

    model: RewardModel
    metadata: ModelMetadata
    prompt_embeddings: np.ndarray
    train_questions: np.ndarray | None = None  # uint64 (Q,) sorted question hashes of the training side
    # the static embedder's build folder, copied into the artifact so that scoring never distills (None: another kind)
    embedder_folder: Path | None = None
    neighbours: dict | None = None  # the near-duplicate vote's arrays (oirl_fast.reranking.fallback.fit_vote)


@dataclass
class TrainingSet:
    """What a reward model is fitted on: the split, the pooled training cells, the prompt embeddings.

    The single-machine fit builds the feature rows here; the Dask fit builds them on
    the workers, one block of cells each (:mod:`oirl_fast.train.dask_fit`)."""

    table: pa.Table
    protocol: Protocol
    split: SplitLog
    train: Outcomes  # pooled per (question group, training prompt)
    prompt_emb: np.ndarray  # every prompt, log order
    train_cols: list[int]  # rows of prompt_emb that are training prompts

    @property
    def train_prompt_emb(self) -> np.ndarray:
        return self.prompt_emb[self.train_cols]

    def cells(self):
        """(unit u (k,), prompt p (k,), y, weight, groups): the logged (question, training prompt) cells."""
        u, p = np.nonzero(self.train.count > 0)
        return u, p, self.train.rate[u, p], self.train.count[u, p].astype(np.float64), np.asarray(self.train.groups)[u]


MIN_TRAIN_QUESTIONS = 2  # one to fit on, one for the validation split that stops the boosting


def check_trainable(split: SplitLog, source=None) -> None:
    """Refuse, before any embedding or fitting, a training side a reward model cannot be fitted on."""
    if len(split.train_prompt_ids) < 2:
        raise OirlError(f"the log's training rows have {len(split.train_prompt_ids)} prompt(s) "
                        f"{split.train_prompt_ids}; a reward model that chooses between prompts needs at least 2",
                        source)
    n_questions = len(pc.unique(split.train.column("group")))
    if n_questions < MIN_TRAIN_QUESTIONS:
        raise OirlError(f"the protocol's training side has {n_questions} question(s) ({split.train.num_rows} rows); "
                        f"training needs at least {MIN_TRAIN_QUESTIONS} (one is held out for early stopping)", source)
    n_correct = pc.sum(split.train.column("correct").cast(pa.int64())).as_py() or 0
    if n_correct in (0, split.train.num_rows):
        verdict = "correct" if n_correct else "wrong"
        raise OirlError(f"every one of the {split.train.num_rows} training rows is {verdict}: a reward model needs "
                        "both right and wrong answers to learn from", source)


def trainable_split(table: pa.Table, protocol: Protocol, source=None) -> SplitLog:
    """The log cut by ``protocol``, refused (OirlError naming ``source``) if no model can learn from its training side."""
    split = split_log(table, protocol, source)
    check_trainable(split, source)
    return split


def train_question_hashes(split: SplitLog) -> np.ndarray:
    """uint64 (Q,) sorted hashes of the questions on the training side (see ``schema.question_hashes``)."""
    return np.unique(question_hashes(pc.unique(split.train.column("query")).to_pylist()))


def training_set(table: pa.Table, protocol: Protocol, embedder: Embedder, source=None,
                 split: SplitLog | None = None) -> TrainingSet:
    """``source``: the log's file, named in errors; ``split``: ``trainable_split(table, protocol)`` when the
    caller has it already."""
    if split is None:
        split = trainable_split(table, protocol, source)
    train = pool(split.train, unit="group", prompt_ids=split.train_prompt_ids)
    all_ids = [p for p, _ in split.prompts]
    prompt_emb = embedder.embed([t for _, t in split.prompts])
    train_cols = [all_ids.index(p) for p in split.train_prompt_ids]
    return TrainingSet(table, protocol, split, train, prompt_emb, train_cols)


def training_metadata(ts: TrainingSet, model: RewardModel, embedder: Embedder, query_dim: int, n_examples: int,
                      fit_seconds: float, extra_metrics: dict | None = None) -> ModelMetadata:
    """The artifact's metadata of ``model`` (fitted with ``model.config``) on ``ts``: the embedder's id and
    record, the feature layout (``query_dim`` query + the prompts' columns), ``n_examples`` training cells,
    ``fit_seconds`` and the validation figures, with ``extra_metrics`` added to the metrics."""
    split = ts.split
    config = model.config
    layout = FeatureLayout(query_dim, ts.prompt_emb.shape[1])
    return ModelMetadata(
        dataset=_dataset_name(ts.table),
        backend=config.backend,
        embedding_model=embedder.model_id,
        feature_layout=layout.to_dict(),
        prompts=[{"id": p, "text": t, "seen_in_training": p in split.train_prompt_ids} for p, t in split.prompts],
        prompt_embeddings_sha256=embeddings_hash(ts.prompt_emb),
        protocol=ts.protocol.to_dict(),
        train_config=config.to_dict(),
        best_iteration=model.best_iteration,
        n_train_examples=int(n_examples),
        metrics={"fit_seconds": round(fit_seconds, 2), "n_train_questions": ts.train.n_units,
                 "validation": model.validation, **(extra_metrics or {})},
        calibration=model.calibrator.to_dict() if model.calibrator is not None else None,
        embedder=encoder_record(embedder.encoder),
    )


def fit_reward_model(
    table: pa.Table, protocol: Protocol, config: TrainConfig, embedder: Embedder, log=print, source=None,
    split: SplitLog | None = None,
) -> FittedModel:
    """Fit a reward model on the protocol's train rows (held-out prompts excluded); ``source`` names the log in
    errors; ``split``: the log already cut by :func:`trainable_split` (saves a second cut)."""
    ts = training_set(table, protocol, embedder, source, split)
    query_emb = embedder.embed(ts.train.texts)
    X, y, w, groups = training_examples(ts.train, query_emb, ts.train_prompt_emb)
    t0 = time.perf_counter()
    model = RewardModel(config).fit(X, y, w, groups)
    fit_seconds = time.perf_counter() - t0
    log(f"  fitted {config.backend}: {model.best_iteration} trees on {len(y)} (question, prompt) cells in {fit_seconds:.1f}s")
    metadata = training_metadata(ts, model, embedder, query_emb.shape[1], len(y), fit_seconds)
    return FittedModel(model, metadata, ts.prompt_emb, train_question_hashes(ts.split), static_folder(embedder.encoder))


def write_artifact(fitted: FittedModel, out_dir, compile_library: bool = True, protocol: Protocol | None = None) -> Artifact:
    """Write a fitted model as an artifact; ``protocol`` relabels a model whose split two protocols share."""
    metadata = fitted.metadata
    if protocol is not None:
        metadata = replace(metadata, protocol=protocol.to_dict(), metrics=dict(metadata.metrics))
    path = save_artifact(out_dir, fitted.model, metadata, fitted.prompt_embeddings, compile_library=compile_library,
                         train_questions=fitted.train_questions, embedder_folder=fitted.embedder_folder,
                         neighbours=fitted.neighbours)
    return load_artifact(path)


def static_folder(encoder) -> Path | None:
    """The build folder of a static encoder (what the artifact carries), None for other kinds."""
    return Path(encoder.folder) if getattr(encoder, "kind", None) == "static" else None


def train_artifact(
    table: pa.Table,
    protocol: Protocol,
    config: TrainConfig,
    embedder: Embedder,
    out_dir,
    compile_library: bool = True,
    log=print,
    source=None,
) -> Artifact:
    """Fit a reward model on the protocol's train rows and write the artifact to ``out_dir``; ``source`` names
    the log in errors. A caller holding the log already cut by :func:`trainable_split` calls
    :func:`fit_reward_model` with ``split=`` and then :func:`write_artifact`."""
    return write_artifact(fit_reward_model(table, protocol, config, embedder, log, source), out_dir, compile_library)
