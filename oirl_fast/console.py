"""The one way oirl-fast builds rich consoles: text that comes from the user is printed literally.

rich reads ``[bold]`` as markup and ``:train:`` as an emoji code by default, so a file
name, a prompt id or an error message quoting ``gsm8k:train:0`` would be printed
changed. Consoles from :func:`make_console` have markup, emoji and highlighting off;
oirl-fast's own styling is applied with ``rich.text.Text`` objects instead.
"""
from __future__ import annotations

from rich.console import Console


def make_console(stderr: bool = True, **kwargs) -> Console:
    """A rich Console that prints every string verbatim (no markup, no emoji codes, no highlighting)."""
    return Console(stderr=stderr, markup=False, emoji=False, highlight=False, **kwargs)
