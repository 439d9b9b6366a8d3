"""Re-grade stored responses without calling the LLM again (``oirl grade``).

Input is an oirl log (``.parquet`` / ``.jsonl``) whose ``response`` column keeps the
answers, or the published GSM8K answer files (a folder such as
``shared/data/prompt_oirl_llama2/answers/gsm8k``, or one
``llama_gsm8k_*answers_list_<alias>.txt[.gz]`` file): their gold answers and published
verdicts are read from the data folder that holds them.

The result is a log in LOG_SCHEMA whose ``correct`` is the new verdict, plus a
:class:`RegradeSummary` counting agreements with the verdict already present.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import OirlError
from ..schema import conform, read_logs
from .graders import Grader, GoldError

_ANSWER_FILE = re.compile(r"llama_gsm8k_(?:test_answers_list_(\w+)|answers_list_(gpt4_\d+))\.txt(?:\.gz)?")


@dataclass
class Disagreement:
    query_id: str
    prompt_id: str
    gold: str
    old: bool
    new: bool
    response_tail: str


@dataclass
class RegradeSummary:
    """Counts over the records: graded (had a response), agreeing with the old verdict, changed each way."""

    grader: str
    records: int
    graded: int
    without_response: int
    agree: int
    old_true_new_false: int
    old_false_new_true: int
    agreement: float
    accuracy_old: float
    accuracy_new: float
    examples: list[Disagreement] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def lines_text(self) -> list[str]:
        return [
            f"{self.graded} of {self.records} records re-graded with {self.grader!r} "
            f"({self.without_response} without a response keep their verdict)",
            f"agrees with the verdict already present on {self.agree}/{self.graded} = {self.agreement:.2%}; "
            f"changed: {self.old_true_new_false} true->false, {self.old_false_new_true} false->true",
            f"accuracy {self.accuracy_old:.4f} before, {self.accuracy_new:.4f} after",
        ]


def is_published_answers(path: Path) -> bool:
    if path.is_dir():
        return any(_ANSWER_FILE.fullmatch(p.name) for p in path.iterdir())
    return bool(_ANSWER_FILE.fullmatch(path.name))


def _data_root(path: Path) -> Path:
    """The data folder above ``.../prompt_oirl_llama2/answers/gsm8k``."""
    folder = path if path.is_dir() else path.parent
    for parent in [folder, *folder.parents]:
        if parent.name == "prompt_oirl_llama2":
            return parent.parent
    raise OirlError("published answer files must sit under <data>/prompt_oirl_llama2/answers/gsm8k "
                    "(gold answers and verdicts are read from <data>)", path)


def published_answers_log(path: Path) -> tuple[pa.Table, list[str]]:
    """The published GSM8K answers under ``path`` as a log (responses, published verdicts, critique
    confidences), and the raw gold text after ``####`` per row (the published grader read it unnormalized)."""
    from .published import GSM8K_TEST, _locate, _open_text, import_published, load_gsm8k_answers, load_prompts

    path = Path(path)
    src = _data_root(path)
    prompts = load_prompts(src)
    if path.is_dir():
        wanted = {m.group(1) or m.group(2) for p in path.iterdir() if (m := _ANSWER_FILE.fullmatch(p.name))}
    else:
        m = _ANSWER_FILE.fullmatch(path.name)
        wanted = {m.group(1) or m.group(2)}
    chosen = [p for p in prompts if p.id in wanted]
    if not chosen:
        raise OirlError("no answer file matches a prompt of prompts.json", path)
    log = import_published("gsm8k", src)  # validates every file it reads, test.jsonl included
    raw_gold: list[str] = []
    with _open_text(_locate(src, "gsm8k/test.jsonl")) as fh:
        for line in fh:
            if len(raw_gold) == GSM8K_TEST:
                break
            raw_gold.append(json.loads(line)["answer"].rsplit("####", 1)[-1].strip())
    test = log.filter(pc.equal(log.column("split"), "test"))
    parts, raws = [], []
    for p in chosen:
        rows = test.filter(pc.equal(test.column("prompt_id"), p.id))
        answers = load_gsm8k_answers(p, src)
        rows = rows.set_column(rows.schema.get_field_index("response"), "response", pa.array(answers, pa.string()))
        parts.append(rows)
        raws += raw_gold
    table = pa.concat_tables(parts)
    return conform(table, path), raws


def regrade(table: pa.Table, grader: Grader, gold_text: list[str] | None = None, where: str | Path = "<log>",
            n_examples: int = 20) -> tuple[pa.Table, RegradeSummary]:
    """Re-grade every row that has a response; rows without one keep their verdict.

    ``gold_text``: per-row gold to grade against instead of the ``gold`` column (the raw
    published text). Returns the table with the new ``correct`` and the summary.
    """
    responses = table.column("response").to_pylist()
    gold = gold_text if gold_text is not None else table.column("gold").to_pylist()
    old = np.array(table.column("correct").to_pylist(), dtype=bool)
    new = old.copy()
    has = np.array([r is not None for r in responses], dtype=bool)
    for i in np.flatnonzero(has):
        try:
            new[i] = grader(responses[i], gold[i])
        except GoldError as exc:
            raise OirlError(f"row {i} (query {table.column('query_id')[int(i)].as_py()!r}): {exc}", where) from None
    graded = int(has.sum())
    agree = int((old[has] == new[has]).sum())
    qids, pids = table.column("query_id").to_pylist(), table.column("prompt_id").to_pylist()
    examples = [
        Disagreement(qids[i], pids[i], str(gold[i]), bool(old[i]), bool(new[i]), responses[i][-160:])
        for i in np.flatnonzero(has & (old != new))[:n_examples]
    ]
    summary = RegradeSummary(
        grader=grader.name, records=table.num_rows, graded=graded, without_response=table.num_rows - graded,
        agree=agree, old_true_new_false=int((old & ~new & has).sum()), old_false_new_true=int((~old & new & has).sum()),
        agreement=agree / graded if graded else float("nan"),
        accuracy_old=float(old.mean()) if len(old) else float("nan"),
        accuracy_new=float(new.mean()) if len(new) else float("nan"), examples=examples,
    )
    out = table.set_column(table.schema.get_field_index("correct"), "correct", pa.array(new, pa.bool_()))
    return out, summary


def regrade_path(path: str | Path, grader: Grader, n_examples: int = 20) -> tuple[pa.Table, RegradeSummary]:
    """Re-grade a log file or the published answer files at ``path``."""
    path = Path(path)
    if not path.exists():
        raise OirlError("file or folder not found", path)
    if is_published_answers(path):
        table, raw = published_answers_log(path)
        return regrade(table, grader, raw, path, n_examples)
    if path.is_dir():
        raise OirlError("folder holds no published answer files (llama_gsm8k_*answers_list_*.txt); "
                        "pass a log file (.parquet or .jsonl)", path)
    table = read_logs(path)
    if table.column("response").null_count == table.num_rows:
        raise OirlError("the log keeps no responses (column 'response' is empty): nothing to re-grade", path)
    return regrade(table, grader, None, path, n_examples)


__all__ = ["RegradeSummary", "regrade", "regrade_path", "published_answers_log"]
