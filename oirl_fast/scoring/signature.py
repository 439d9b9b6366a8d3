"""The job signature a resumed run is checked against, and the record of a finished output.

``OUT.partial.job.json`` (local stream), the Dask manifest and ``OUT.job.json`` (a finished
output) all hold :func:`job_signature`: everything an output line depends on.
"""
from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Sequence

from ..paths import is_stdio, is_stream
from ..train.artifact import file_sha256
from .candidates import candidates_sha256
from .options import ScoreOptions

JOB_FORMAT = "oirl-score-job"
DONE_FORMAT = "oirl-score-done"
DONE_SUFFIX = ".job.json"  # OUT.job.json: the job that wrote the finished OUT, for --resume to recognise it


def embedder_identity(artifact) -> dict:
    """What turns a query text into the model's input vector, as recorded for --resume: the
    artifact's embedder record (kind, identity, weights hash); the precision is among the options."""
    return {"embedding_model": artifact.metadata.embedding_model, "embedder": artifact.metadata.embedder_record}


def job_signature(scoring, files: Sequence[str | Path], embeddings: str | Path | None) -> dict:
    """Everything an output line depends on, for a resumed run to check it continues the same job:
    the input files (identity, size, modification time), the model (SHA-256 of its metadata.json,
    which holds the checksums of its other files), the candidates, the options and the embedder.
    Shared by the local stream (``OUT.partial.job.json``) and the Dask manifest."""
    def stat(p) -> dict:
        if is_stream(p):  # standard input or a FIFO: nothing to stat (and --resume refuses streams)
            return {"file": "<stdin>" if is_stdio(p) else str(p), "stream": True}
        st = os.stat(p)
        return {"file": str(Path(p).resolve()), "dev": st.st_dev, "ino": st.st_ino, "size": st.st_size,
                "mtime_ns": st.st_mtime_ns}

    artifact = scoring.artifact
    return {
        "model": str(Path(artifact.path).resolve()),
        "model_sha256": file_sha256(Path(artifact.path) / "metadata.json"),
        "inputs": [stat(f) for f in files],
        "embeddings": None if embeddings is None else stat(embeddings),
        "candidates_sha256": candidates_sha256(scoring.cands),
        "options": scoring.options.signature(),
        "embedder": embedder_identity(artifact),
    }


def differences(old: dict, new: dict) -> str:
    names = {"inputs": "input file", "embeddings": "--embeddings file", "model": "model folder",
             "model_sha256": "model", "candidates_sha256": "candidate prompts", "embedder": "embedder"}
    diff = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) == new.get(k):
            continue
        if k == "options" and isinstance(old.get(k), dict):
            flags = {f.name: f.metadata["cli"] for f in fields(ScoreOptions)}
            diff += [flags.get(o, o) for o in sorted(set(old[k]) | set(new[k])) if old[k].get(o) != new[k].get(o)]
        else:
            diff.append(names.get(k, k))
    return ", ".join(dict.fromkeys(diff)) or "format"


def read_job(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == JOB_FORMAT else None


def done_path(out: Path) -> Path:
    return out.with_name(out.name + DONE_SUFFIX)


def _out_stat(path: Path) -> dict:
    st = os.stat(path)
    return {"dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def write_done(out: Path, job: dict, written: Path) -> None:
    """Record beside ``out`` that the file ``written`` (about to be renamed onto ``out``: a rename keeps
    inode, size and modification time) is the finished output of ``job`` (a :func:`job_signature`)."""
    from ..atomic import write_text

    record = {"format": DONE_FORMAT, "job": job, "output": _out_stat(written)}
    # ASCII: a file name that is not valid UTF-8 is kept as its escape, never an encoding error
    write_text(done_path(out), json.dumps(record, indent=1, ensure_ascii=True))


def finished_by(out: Path, job: dict) -> tuple[bool, str]:
    """(is ``out`` the finished output of ``job``, and if not, why not) from ``OUT.job.json``."""
    try:
        record = json.loads(done_path(out).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or record.get("format") != DONE_FORMAT or not isinstance(record.get("job"), dict):
        return False, "no record of the job that wrote it"
    if record.get("output") != _out_stat(out):
        return False, "it was changed after that job wrote it"
    if record["job"] != job:
        return False, f"{differences(record['job'], job)} differ"
    return True, ""
