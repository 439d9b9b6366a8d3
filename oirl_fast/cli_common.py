"""What the three CLI modules share: the typer app, the error handler and common options.

``cli.py``, ``cli_score.py`` and ``cli_collect.py`` import from here and never from each other
(``cli.py`` imports the other two only to register their commands).
"""
from __future__ import annotations

import errno
import functools
import os
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.text import Text

from .collect import DATASETS
from .console import make_console
from .errors import OirlError
from .paths import write_error

__all__ = ["DATASETS", "app", "err", "cli_errors"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Query-dependent prompt optimization from offline logs (Prompt-OIRL), with a compiled best-of-N scorer.",
)
err = make_console()  # markup and emoji codes off: file names and messages are printed as they are


def cli_errors(fn):
    """OirlError -> one line on stderr and its exit code (2); a user-side write failure likewise.

    Warnings are collected while the command runs and printed after it, one line each (Python would
    print each with a source line), and not at all when a one-line error says what went wrong."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            try:
                result = _run(fn, args, kwargs)
            except typer.Exit as exc:
                if exc.exit_code in (0, None):
                    _replay(caught)
                raise
        _replay(caught)
        return result

    return wrapper


def _replay(caught) -> None:
    for text in dict.fromkeys(str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()):
        err.print(Text("warning:", style="yellow"), text, soft_wrap=True)


def _fail(exc: OirlError):
    err.print(Text("error:", style="bold red"), str(exc), soft_wrap=True)
    raise typer.Exit(exc.exit_code) from None


def _run(fn, args, kwargs):
    try:
        os.getcwd()
    except OSError:  # every relative path would fail, each with a traceback of its own
        _fail(OirlError("the current folder no longer exists (deleted?); cd to an existing folder and run again"))
    try:
        return fn(*args, **kwargs)
    except OirlError as exc:
        _fail(exc)
    except OSError as exc:  # a write that failed on the user's side (full disk, read-only): one line too
        user = write_error(exc, None) if exc.filename is not None or exc.errno == errno.ENOSPC else None
        if user is None:
            raise
        _fail(user)


def make_embedder(cache_dir: Optional[Path], device: str, batch_size: int = 128, progress: bool = True,
              spec: Optional[str] = None):
    """An Embedder for ``--embedder`` (static, minilm or a sentence-transformers folder)."""
    from .embed import Embedder
    from .encoders import make_encoder

    encoder = make_encoder(spec, cache_dir, device, batch_size, log=lambda s: err.print(s, highlight=False))
    return Embedder(cache_dir=cache_dir, progress=progress, encoder=encoder)


CacheOpt = typer.Option(None, "--cache-dir", help="Embedding cache folder \\[default: $OIRL_CACHE_DIR or ~/.cache/oirl-fast].")
DeviceOpt = typer.Option("auto", "--device", help="Where to embed: auto (CUDA when present), cpu or cuda.")
EmbedderOpt = typer.Option(
    "static", "--embedder",
    help="static: model2vec distilled from all-MiniLM-L6-v2 (built on first use, ~100x faster than the transformer "
         "on a CPU, same selection quality in our measurements); minilm: all-MiniLM-L6-v2 itself; or the path of a "
         "local sentence-transformers folder (bge, e5, your own). Recorded in the model artifact.",
)
SchedulerOpt = typer.Option(
    None, "--scheduler",
    help="--engine dask: address of a running scheduler, e.g. tcp://10.0.0.5:8786 "
         "\\[default: a local cluster on this machine]. Paths must be shared with the workers.",
)
WorkersOpt = typer.Option(
    None, "--workers", min=1, help="--engine dask without --scheduler: worker processes \\[default: CPU cores]."
)
