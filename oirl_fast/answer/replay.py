"""The ``replay:LOG`` backend: answer (query, prompt) pairs from a log's logged answers, without an LLM.

Any oirl log whose ``response`` column keeps the answers works: one written by ``oirl collect``,
or the published GSM8K answers (``oirl import gsm8k --answers --out LOG``). A pair is looked up
by (query id, prompt id, sample); a pair the log lacks, or holds without an answer text, is
refused with an error naming the log, never made up. So is a pair whose logged query or prompt
text differs from the one asked (another question under the same id). With ``--critique``, the
logged self-critique ``confidence`` is the critique's answer. This is the oracle that checks
``oirl answer`` against ``oirl tradeoff``'s simulation on the same logged answers.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

from ..collect.asking import Ask, Reply
from ..errors import OirlError
from ..schema import read_logs

PREFIX = "replay:"


def replay_path(backend: str) -> Path | None:
    """The log of a ``replay:LOG`` backend name, None for any other backend."""
    if not backend.startswith(PREFIX):
        return None
    path = backend[len(PREFIX):]
    if not path:
        raise OirlError("--backend replay:LOG needs the log's path, e.g. replay:logs/gsm8k-answers.parquet")
    return Path(path)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ReplayAsker:
    """Replies from a log. ``critique``: reply with the logged self-critique confidence too."""

    name = "replay"

    def __init__(self, path: str | Path, critique: bool = False):
        self.path = Path(path)
        self.critique = critique
        table = read_logs(self.path)
        if table.column("response").null_count == table.num_rows:
            raise OirlError("the log keeps no answers (column 'response' is empty), so it cannot be replayed; "
                            "collect with oirl collect, or import GSM8K with --answers", self.path)
        cols = [table.column(c).to_pylist() for c in
                ("query_id", "prompt_id", "sample", "query", "prompt", "response", "confidence")]
        self._rows: dict[tuple, tuple] = {}
        for qid, pid, sample, query, prompt, response, conf in zip(*cols):
            key = (qid, pid, 0 if sample is None else sample)
            if key in self._rows:
                raise OirlError(f"the log holds query {qid!r} with prompt {pid!r} (sample {key[2]}) twice; "
                                "a replay needs one answer per pair", self.path)
            self._rows[key] = (query, prompt, response, conf)

    def ask(self, requests: Sequence[Ask]) -> list[Reply]:
        out = []
        for r in requests:
            qid, pid, sample = r.key
            row = self._rows.get((qid, pid, sample))
            what = f"query {qid!r} with prompt {pid!r}" + (f" (sample {sample})" if sample else "")
            if row is None or row[2] is None:
                raise OirlError(f"the log has no answer for {what}; a replay answers only the pairs it logged",
                                self.path)
            query, prompt, response, conf = row
            if query != r.query.query:
                raise OirlError(f"the log's question {qid!r} is not the one asked (another text under that id)",
                                self.path)
            if prompt != r.prompt.text:
                raise OirlError(f"the log's prompt {pid!r} is not the one asked (another text under that id)",
                                self.path)
            if self.critique and conf is None:
                raise OirlError(f"--critique: the log has no self-critique confidence for {what}", self.path)
            out.append(Reply(response, 0, conf if self.critique else None))
        return out
