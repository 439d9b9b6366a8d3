"""The one way oirl-fast builds rich consoles: text that comes from the user is printed literally.

rich reads ``[bold]`` as markup and ``:train:`` as an emoji code by default, so a file
name, a prompt id or an error message quoting ``gsm8k:train:0`` would be printed
changed. Consoles from :func:`make_console` have markup, emoji and highlighting off;
oirl-fast's own styling is applied with ``rich.text.Text`` objects instead.

Messages never decide the fate of the data: a console on a closed standard error (``oirl score
... 2>&1 | head -1``) stops printing instead of raising, so the run still finishes its output.
A file name that is not valid UTF-8 is printed with its bytes escaped.
"""
from __future__ import annotations

import contextlib
import os
import sys

from rich.console import Console


class _StderrProxy:
    """``sys.stderr`` as it is at each write (a test runner swaps it), made harmless: a write that fails
    (closed pipe, closed descriptor) turns the proxy silent, and text that the stream cannot encode
    is escaped rather than raised."""

    def __init__(self):
        self.broken = False

    @property
    def _stream(self):
        return sys.stderr

    def write(self, text: str) -> int:
        if self.broken or self._stream is None:
            return len(text)
        try:
            try:
                return self._stream.write(text)
            except UnicodeEncodeError:
                enc = getattr(self._stream, "encoding", None) or "utf-8"
                return self._stream.write(text.encode(enc, "backslashreplace").decode(enc, "replace"))
        except (OSError, ValueError):
            self._silence()
            return len(text)

    def flush(self) -> None:
        if self.broken or self._stream is None:
            return
        try:
            self._stream.flush()
        except (OSError, ValueError):
            self._silence()

    def _silence(self) -> None:
        self.broken = True
        # later writes by anyone (the interpreter's last flush at exit included) go nowhere, quietly
        with contextlib.suppress(OSError, ValueError, AttributeError):
            fd = self._stream.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)

    def isatty(self) -> bool:
        try:
            return not self.broken and self._stream.isatty()
        except (OSError, ValueError, AttributeError):
            return False

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._stream, "encoding", None) or "utf-8"


_STDERR = _StderrProxy()


def make_console(stderr: bool = True, **kwargs) -> Console:
    """A rich Console that prints every string verbatim (no markup, no emoji codes, no highlighting)."""
    if stderr and "file" not in kwargs:
        kwargs["file"] = _STDERR
    return Console(stderr=stderr, markup=False, emoji=False, highlight=False, **kwargs)
