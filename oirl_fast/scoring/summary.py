"""Run summaries of a scoring job (local stream and Dask), and their one text formatter."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .partitions import MANIFEST

@dataclass
class ScoreSummary:
    input: str
    output: str
    lines: int = 0  # output lines after this run (resumed + new)
    resumed: int = 0  # lines found complete in the output before this run
    scored: int = 0
    errors: int = 0
    pairs: int = 0
    candidates: int = 0
    path: str = ""
    fallback_reason: str | None = None
    seconds: float = 0.0
    score_seconds: float = 0.0
    embed_seconds: float = 0.0
    read_seconds: float = 0.0  # reading and parsing input lines
    format_seconds: float = 0.0  # turning picks into JSON records
    write_seconds: float = 0.0  # writing them to the output file
    pairs_per_s: float = 0.0
    first_errors: list = field(default_factory=list)
    interrupted: bool = False
    low_confidence: int = 0  # picks whose calibrated success probability fell below --min-confidence

    def to_dict(self) -> dict:
        return asdict(self)

    def lines_text(self) -> list[str]:
        out = [
            f"{self.lines} lines in {self.output}: {self.scored} scored, {self.errors} errors"
            + (f", {self.resumed} kept from an earlier run" if self.resumed else ""),
            f"scoring path: {self.path}" + (f" (fallback: {self.fallback_reason})" if self.fallback_reason else ""),
            *([f"{self.low_confidence} picks below --min-confidence (field low_confidence)"] if self.low_confidence else []),
            f"{self.pairs} pairs over {self.candidates} candidates in {self.seconds:.1f}s "
            f"(scoring {self.score_seconds:.2f}s = {self.pairs_per_s:,.0f} pairs/s; embedding {self.embed_seconds:.1f}s; "
            f"reading {self.read_seconds:.1f}s; writing {self.format_seconds + self.write_seconds:.1f}s)",
        ]
        for e in self.first_errors:
            out.append(f"  line {e['line']}: {e['error']}")
        if self.errors > len(self.first_errors):
            out.append(f"  ... and {self.errors - len(self.first_errors)} more error records")
        return out


@dataclass
class DistributedScoreSummary:
    input: list
    output: str
    parts_dir: str | None
    merged: bool
    partitions: int = 0
    partitions_resumed: int = 0
    workers: int = 0
    lines: int = 0
    scored: int = 0
    errors: int = 0
    pairs: int = 0
    candidates: int = 0
    path: str = ""
    fallback_reason: str | None = None
    seconds: float = 0.0
    score_seconds: float = 0.0  # summed over workers
    embed_seconds: float = 0.0  # summed over workers
    pairs_per_s: float = 0.0  # pairs / wall seconds of the whole job
    low_confidence: int = 0
    first_errors: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def lines_text(self) -> list[str]:
        where = self.output if self.merged else f"{self.output} ({self.partitions} part files + {MANIFEST})"
        out = [
            f"{self.lines} lines in {where}: {self.scored} scored, {self.errors} errors",
            f"dask: {self.partitions} partitions on {self.workers} workers"
            + (f", {self.partitions_resumed} kept from an earlier run" if self.partitions_resumed else ""),
            f"scoring path: {self.path}" + (f" (fallback: {self.fallback_reason})" if self.fallback_reason else ""),
            *([f"{self.low_confidence} picks below --min-confidence (field low_confidence)"] if self.low_confidence else []),
            f"{self.pairs} pairs over {self.candidates} candidates in {self.seconds:.1f}s wall = {self.pairs_per_s:,.0f} pairs/s "
            f"(worker time: scoring {self.score_seconds:.2f}s, embedding {self.embed_seconds:.1f}s)",
        ]
        for e in self.first_errors:
            out.append(f"  line {e['line']}: {e['error']}")
        if self.errors > len(self.first_errors):
            out.append(f"  ... and {self.errors - len(self.first_errors)} more error records")
        return out
