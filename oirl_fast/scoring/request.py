"""``ScoreJob``: one scoring request (model, source, target, options, engine), validated once.

``oirl score``, :func:`~oirl_fast.scoring.stream.score_file` and
:func:`~oirl_fast.scoring.dask.score_distributed` all build one and hand it to a runner: the
local stream (:func:`~oirl_fast.scoring.stream.run_local`) or the Dask partitions
(:func:`~oirl_fast.scoring.dask.run_dask`). Building it checks every path argument (nothing
destroys an input, every output can be written), so the runners never check them again.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import OirlError
from ..paths import JSONL_SUFFIXES, Output, check_paths, is_stdio, is_stream
from .options import ScoreOptions, options_from

PARTIAL_SUFFIX = ".partial"  # OUT is written as OUT.partial and renamed when complete
JOB_SUFFIX = ".partial.job.json"  # beside it: which job wrote it, checked by --resume


@dataclass(frozen=True)
class Source:
    """What is scored: ``path`` (``--in``: a file, ``-``, a FIFO; with Dask also a folder, a glob
    or a list of shards), or ``embeddings`` (a ``.npy`` of query vectors) with ``ids`` (one a line)."""

    path: str | Path | list | None = None
    embeddings: Path | None = None
    ids: Path | None = None

    def __post_init__(self):
        if self.embeddings is not None or self.ids is not None:
            if self.embeddings is None or self.ids is None:
                raise OirlError("--embeddings and --ids go together")
            if self.path is not None:
                raise OirlError("give either --in or --embeddings/--ids, not both")
        elif self.path is None:
            raise OirlError("no input: give --in queries.jsonl (or --embeddings with --ids)")


@dataclass(frozen=True)
class DaskEngine:
    """``--engine dask``: the cluster (``scheduler`` address, or a LocalCluster of ``workers``),
    ``partitions`` of whole lines, and ``merge`` the part files into one output (None: merge
    unless the output is an existing folder or ends with a slash; resolved by :class:`ScoreJob`)."""

    scheduler: str | None = None
    workers: int | None = None
    partitions: int | None = None
    merge: bool | None = None
    keep_parts: bool = False

    def __post_init__(self):
        if self.partitions is not None and self.partitions < 1:
            raise OirlError(f"--partitions must be at least 1, got {self.partitions}")


@dataclass(frozen=True)
class ScoreJob:
    """One validated scoring request.

    ``model``: the artifact folder; ``source``: what to score; ``out``: where (``-`` is standard
    output); ``options``: every option that shapes the output or the run; ``engine``: None for
    the local stream, a :class:`DaskEngine` for partitions on Dask; ``prompts``: a candidate
    prompts file (None: the model's own); ``resume``: continue an interrupted run; ``embedder``:
    the new path of a moved folder encoder; ``also_writes``: the command's other outputs (the
    CLI's ``--summary``), checked with the job's own.
    """

    model: Path
    source: Source
    out: Path
    options: ScoreOptions = field(default_factory=ScoreOptions)
    engine: DaskEngine | None = None
    prompts: Path | None = None
    resume: bool = False
    embedder: str | None = None
    also_writes: tuple = ()

    def __post_init__(self):
        dask = self.engine is not None
        if dask and self.embedder is not None:
            raise OirlError("--embedder (a moved encoder folder) is not supported with --engine dask")
        if dask and (is_stdio(self.source.path) or is_stdio(self.out)):
            raise OirlError("--engine dask reads and writes files shared with its workers; "
                            "standard input/output (-) need --engine local")
        if dask and self.engine.merge is None:
            merge = not (Path(self.out).is_dir() or str(self.out).endswith(("/", os.sep)))
            object.__setattr__(self, "engine", DaskEngine(**{**_as_dict(self.engine), "merge": merge}))
        inputs, outputs = self.paths()
        check_paths(inputs, [*outputs, *self.also_writes])

    @property
    def merged(self) -> bool:
        """A Dask job that writes one file (not a folder of part files)."""
        return self.engine is not None and bool(self.engine.merge)

    def paths(self) -> tuple[dict, list[Output]]:
        """The path arguments as ``check_paths`` takes them: (inputs, outputs). A local output also
        stands for its ``OUT.partial`` and ``OUT.partial.job.json``; a merged Dask output for its
        ``OUT.parts`` folder; both for ``OUT.job.json``, the record of a finished output."""
        s, out = self.source, self.out
        inputs = {"MODEL": self.model, "--in": s.path, "--prompts": self.prompts, "--embeddings": s.embeddings,
                  "--ids": s.ids, "--cache-dir": self.options.cache_dir}
        folder = self.engine is not None and not self.engine.merge
        outputs = [Output(out, "--out", JSONL_SUFFIXES, kind="folder" if folder else "file")]
        if not is_stream(out) and not folder:
            if self.engine is None:
                outputs += [Output(f"{out}{PARTIAL_SUFFIX}", "--out (its .partial)", kind="file"),
                            Output(f"{out}{JOB_SUFFIX}", "--out (its .partial.job.json)", kind="file")]
            else:
                outputs.append(Output(f"{out}.parts", "--out (its .parts folder)", kind="folder"))
            outputs.append(Output(f"{out}.job.json", "--out (its .job.json)", kind="file"))
        return inputs, outputs

    @classmethod
    def create(cls, model, source, out, options: ScoreOptions | None = None, **keywords) -> "ScoreJob":
        """A job from keyword arguments, as :func:`score_file` and :func:`score_distributed` take them:
        ``source`` is ``--in`` (or None with ``embeddings=`` and ``ids=``); the other keywords are
        fields of :class:`ScoreJob` (``prompts``, ``resume``, ...), of :class:`DaskEngine` (which make
        it a Dask job; ``engine="dask"`` for one with the defaults) or of :class:`ScoreOptions`."""
        job_kw = {k: keywords.pop(k) for k in _names(cls) if k in keywords}
        src_kw = {k: keywords.pop(k) for k in ("embeddings", "ids") if k in keywords}
        engine = job_kw.pop("engine", None)
        engine = None if engine == "local" else engine
        dask_kw = {k: keywords.pop(k) for k in _names(DaskEngine) if k in keywords}
        if engine == "dask" or dask_kw:
            engine = DaskEngine(**dask_kw)
        elif engine is not None and not isinstance(engine, DaskEngine):
            raise OirlError(f"unknown engine {engine!r}; use local or dask")
        return cls(model=Path(model), source=Source(source, **src_kw), out=Path(out),
                   options=options_from(options, keywords), engine=engine, **job_kw)


def _names(cls) -> set[str]:
    return {f.name for f in fields(cls)}


def _as_dict(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}
