"""One exception type for every problem a user can fix (bad input, missing files).

The CLI turns it into a one-line message and exit code 2; anything else is a bug
and keeps its traceback.
"""
from __future__ import annotations

from pathlib import Path


class OirlError(Exception):
    """A user-facing error: what is wrong, and where (file and line when known)."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path if self.line is None else f"{self.path}:{self.line}"
            where += ": "
        return f"{where}{self.message}"
