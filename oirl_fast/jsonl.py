"""Strict JSON-lines reading shared by every reader of a user's file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from .errors import OirlError


def iter_objects(path: Path, what: str = "record") -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; a bad line is an OirlError naming file and line."""
    with Path(path).open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise OirlError(f"malformed JSON ({exc.msg})", path, lineno) from None
            if not isinstance(rec, dict):
                raise OirlError(f"a {what} must be a JSON object", path, lineno)
            yield lineno, rec
