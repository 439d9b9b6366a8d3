"""The one progress bar every long-running step shows (embedding, scoring, partitions, import, collection).

A rich bar on stderr with markup off (file names are printed as they are), transient so
that it leaves no trace in logs, and a no-op when disabled or when there is nothing to do.
"""
from __future__ import annotations

import time


class ProgressBar:
    """``with ProgressBar("scoring", total=n) as bar: bar.advance(k, note="5,000 pairs/s")``.

    ``total``: units of work, or None for a stream of unknown length; ``done``: units
    already finished (a resumed job); ``enabled=False`` or ``total == 0``: nothing is shown;
    ``in_bytes``: the units are bytes, shown as sizes (``12.1/80.0 MB``).
    ``bar.elapsed`` is the seconds since the bar opened (for rates in ``note``).
    """

    def __init__(self, label: str, total: int | None, *, enabled: bool = True, done: int = 0, transient: bool = True,
                 in_bytes: bool = False):
        self.label, self.total, self.done, self.transient, self.in_bytes = label, total, done, transient, in_bytes
        self.enabled = enabled and (total is None or total > 0)
        self._t0 = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return max(1e-9, time.perf_counter() - self._t0)

    def __enter__(self) -> "ProgressBar":
        self._t0 = time.perf_counter()
        if self.enabled:
            from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeRemainingColumn)

            from .console import make_console

            self._bar = Progress(
                TextColumn("{task.description}", markup=False), BarColumn(),
                DownloadColumn() if self.in_bytes else MofNCompleteColumn(),
                TextColumn("{task.fields[note]}", markup=False), TimeRemainingColumn(),
                console=make_console(), transient=self.transient,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total, completed=self.done, note="")
        return self

    def advance(self, n: int = 1, note: str | None = None) -> None:
        """Count ``n`` more units done; ``note`` replaces the text shown after the count (a rate, a total)."""
        if self.enabled:
            if note is None:
                self._bar.advance(self._task, n)
            else:
                self._bar.update(self._task, advance=n, note=note)

    def __exit__(self, *exc) -> bool:
        if self.enabled:
            self._bar.__exit__(*exc)
        return False
