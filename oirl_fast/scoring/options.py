"""``ScoreOptions``: every option of a scoring job, validated once.

One frozen object serves the CLI (``oirl score``), the local runner
(:func:`oirl_fast.scoring.stream.score_file`), the Dask job (shipped to the workers as is)
and the resume signature (:meth:`ScoreOptions.signature`).  Adding a scoring option means
adding a field here (with its CLI name) and the option in ``cli_score.py``; nothing else.

A field is part of the resume signature unless its metadata says ``same_output`` with a
reason: an option that cannot change a single output byte (how fast, where, how much at a
time) does not stop ``--resume``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import OirlError
from ..jsonl import DEFAULT_MAX_LINE_BYTES
from ..query_rows import QueryFields
from .records import RowFields

DEFAULT_CHUNK = 2048
ROUTE_CHOICES = ("auto", "kernel", "compiled", "native")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
PRECISION_CHOICES = ("fp32", "fp16")


def _opt(default, cli: str, same_output: str | None = None, signed_if_set: bool = False):
    """A field with its CLI option name; ``same_output``: why it is left out of the resume signature;
    ``signed_if_set``: in the signature only when not at its default, so that the signature of a job
    that does not use a newer option is what it always was (and its partial outputs still resume)."""
    return field(default=default, metadata={"cli": cli, "same_output": same_output, "signed_if_set": signed_if_set})


@dataclass(frozen=True)
class ScoreOptions:
    """Options of one scoring job (shapes of the inputs and outputs are the runners' business).

    top_k: K best candidates listed per query (``top_k`` field); with_scores: every candidate's
    score (``scores`` field); min_confidence: flag picks whose calibrated success probability is
    below it; route: auto, kernel, compiled or native; precision: query embedding precision;
    threads: threads for embedding and scoring (None: every core locally; a Dask worker's share).
    """

    top_k: int = _opt(1, "--top-k")
    with_scores: bool = _opt(False, "--scores")
    min_confidence: float | None = _opt(None, "--min-confidence")
    route: str = _opt("auto", "--route")
    precision: str = _opt("fp32", "--precision")
    device: str = _opt("auto", "--device", same_output="every device gives the same picks and scores")
    batch_size: int = _opt(128, "--batch-size", same_output="texts per forward pass: speed only")
    chunk_size: int = _opt(DEFAULT_CHUNK, "--chunk-size", same_output="lines per chunk: memory and speed only")
    cache_dir: str | None = _opt(None, "--cache-dir", same_output="a cache holds the vectors the embedder gives")
    strict: bool = _opt(False, "--strict", same_output="a strict run writes nothing when a line is bad")
    threads: int | None = _opt(None, "--threads", same_output="threads: speed only")
    query_field: str = _opt("query", "--query-field", signed_if_set=True)
    id_field: str = _opt("id", "--id-field", signed_if_set=True)
    template: str | None = _opt(None, "--template", signed_if_set=True)
    output_field: str | None = _opt(None, "--output-field", signed_if_set=True)
    max_line_bytes: int = _opt(DEFAULT_MAX_LINE_BYTES, "--max-line-bytes")

    def __post_init__(self):
        def integer(name: str, low: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise OirlError(f"{self.cli_name(name)} must be an integer of at least {low}, got {value!r}")

        def choice(name: str, choices: tuple[str, ...]) -> None:
            if getattr(self, name) not in choices:
                raise OirlError(f"{self.cli_name(name)} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")

        integer("top_k", 1)
        integer("batch_size", 1)
        integer("chunk_size", 1)
        integer("max_line_bytes", 1)
        if self.threads is not None:
            integer("threads", 1)
        choice("route", ROUTE_CHOICES)
        choice("device", DEVICE_CHOICES)
        choice("precision", PRECISION_CHOICES)
        for name in ("with_scores", "strict"):
            if not isinstance(getattr(self, name), bool):
                raise OirlError(f"{self.cli_name(name)} is a flag (True or False), got {getattr(self, name)!r}")
        if self.min_confidence is not None:
            try:
                ok = 0.0 <= float(self.min_confidence) <= 1.0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise OirlError(f"--min-confidence must be in [0, 1], got {self.min_confidence!r}")
        if self.template is not None and self.query_field != "query":
            raise OirlError("give either --query-field or --template, not both")
        if self.output_field is not None and (not isinstance(self.output_field, str) or not self.output_field):
            raise OirlError(f"--output-field must be a field name, got {self.output_field!r}")
        object.__setattr__(self, "_fields", RowFields(QueryFields(self.query_field, self.id_field, self.template),
                                                      self.output_field))
        if self.cache_dir is not None:
            # absolute, so that Dask workers (another working directory) use the same folder
            object.__setattr__(self, "cache_dir", str(Path(self.cache_dir).resolve()))

    @staticmethod
    def cli_name(name: str) -> str:
        """The CLI option of field ``name``."""
        return {f.name: f.metadata["cli"] for f in fields(ScoreOptions)}[name]

    @classmethod
    def signature_fields(cls) -> list[str]:
        """Fields a resumed run must share with the run it continues (those ``signed_if_set`` only when set)."""
        return [f.name for f in fields(cls) if not f.metadata["same_output"] and not f.metadata["signed_if_set"]]

    def signature(self) -> dict:
        """The options part of the resume signature: every field that can change an output byte."""
        out = {}
        for f in fields(self):
            if f.metadata["same_output"] or (f.metadata["signed_if_set"] and getattr(self, f.name) == f.default):
                continue
            out[f.name] = getattr(self, f.name)
        return out

    @property
    def row_fields(self) -> RowFields:
        """Where each input row's query and id are, and where the outputs go."""
        return self._fields


def options_from(options: ScoreOptions | None, overrides: dict) -> ScoreOptions:
    """``options`` itself, or a ScoreOptions built from keyword arguments (the runners accept both)."""
    if options is None:
        return ScoreOptions(**overrides)
    if overrides:
        raise TypeError(f"give either a ScoreOptions or option keywords, not both ({', '.join(sorted(overrides))})")
    if not isinstance(options, ScoreOptions):
        raise TypeError(f"options must be a ScoreOptions, got {type(options).__name__}")
    return options
