"""Run summaries of a scoring job (local stream and Dask), and their one text formatter."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .partitions import MANIFEST


def summary_lines(s, where: str, kept: str, runner: str | None, timing: str) -> list[str]:
    """The text summary of a run, local or Dask: counts, the route that ran, low-confidence picks,
    throughput (``timing``) and the first error records.  ``kept``: what an earlier run left, if
    anything; ``runner``: a line about the runner, if any."""
    out = [
        f"{s.lines} lines in {where}: {s.scored} scored, {s.errors} errors" + (f", {kept}" if kept else ""),
        *([runner] if runner else []),
        f"scoring route: {s.route}" + (f" (fallback: {s.fallback_reason})" if s.fallback_reason else ""),
        *([f"{s.low_confidence} picks below --min-confidence (field low_confidence)"] if s.low_confidence else []),
        f"{s.pairs} pairs over {s.candidates} candidates in {s.seconds:.1f}s{timing}",
    ]
    out += [f"  line {e['line']}: {e['error']}" for e in s.first_errors]
    if s.errors > len(s.first_errors):
        out.append(f"  ... and {s.errors - len(s.first_errors)} more error records")
    return out


@dataclass
class ChunkStats:
    """What scoring one chunk did (:meth:`oirl_fast.scoring.job.Scoring.score_chunk`); the runners add
    these up into their summary, in input order."""

    scored: int = 0
    errors: int = 0
    pairs: int = 0
    low_confidence: int = 0
    embed_seconds: float = 0.0
    score_seconds: float = 0.0
    format_seconds: float = 0.0
    first_errors: list = field(default_factory=list)  # up to FIRST_ERRORS {"line", "error"}


FIRST_ERRORS = 5  # error records a summary quotes


def add_stats(summary, stats: ChunkStats) -> None:
    """Add one chunk's (or one partition's) ``stats`` to a local or Dask ``summary``."""
    for name in ("scored", "errors", "pairs", "low_confidence", "embed_seconds", "score_seconds"):
        setattr(summary, name, getattr(summary, name) + getattr(stats, name))
    if hasattr(summary, "format_seconds"):
        summary.format_seconds += stats.format_seconds
    room = FIRST_ERRORS - len(summary.first_errors)
    if room > 0:
        summary.first_errors.extend(stats.first_errors[:room])


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
    route: str = ""  # the Scorer route that ran, e.g. "kernel (numba CPU)"
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
        kept = f"{self.resumed} kept from an earlier run" if self.resumed else ""
        return summary_lines(self, self.output, kept, None,
                             f" (scoring {self.score_seconds:.2f}s = {self.pairs_per_s:,.0f} pairs/s; embedding "
                             f"{self.embed_seconds:.1f}s; reading {self.read_seconds:.1f}s; writing "
                             f"{self.format_seconds + self.write_seconds:.1f}s)")


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
    route: str = ""  # the Scorer route that ran, e.g. "kernel (numba CPU)"
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
        runner = (f"dask: {self.partitions} partitions on {self.workers} workers"
                  + (f", {self.partitions_resumed} kept from an earlier run" if self.partitions_resumed else ""))
        return summary_lines(self, where, "", runner,
                             f" wall = {self.pairs_per_s:,.0f} pairs/s (worker time: scoring {self.score_seconds:.2f}s, "
                             f"embedding {self.embed_seconds:.1f}s)")
