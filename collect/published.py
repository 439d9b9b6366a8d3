"""Import the published Prompt-OIRL LLaMA-2-7B-chat logs as one log table.

The data layout is described in the data folder's README (``gsm8k/``,
``svamp/``, ``mawps/`` and ``prompt_oirl_llama2/``). Every file is looked up
under its own name and, failing that, with a ``.gz`` suffix, so the same code
reads the plain copy and the compressed copy bundled with the package.

Every count is checked against the published one: a truncated, over-long or
misnumbered file is an :class:`~oirl_fast.errors.OirlError` naming the file
(and line), never a silent truncation.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

import numpy as np
import pyarrow as pa

import oirl_fast

from ..errors import OirlError
from ..progress import ProgressBar
from ..schema import conform, group_key
from . import DATASETS
from .graders import last_number  # noqa: F401  (re-exported: the one number parser lives in graders)

SOURCE_TAG = "prompt-oirl/llama-2-7b-chat"

LOGS_DIR = "prompt_oirl_llama2"
ROLES = ("train", "heldout")

# Published counts. gsm8k: train.jsonl rows, and the first 1000 test.jsonl rows.
GSM8K_TRAIN = 7473
GSM8K_TEST = 1000
# svamp / mawps: rows of the five folds concatenated, and where the published test split starts.
FOLD_ROWS = {"svamp": 19690, "mawps": 7685}
TEST_START = {"svamp": 15000, "mawps": 6000}
N_FOLDS = 5
CSV_COLUMNS = ("Question", "Numbers", "Answer")

_CORR_LINE = re.compile(r"\(\s*(\d+)\s*,\s*(True|False)\s*\)\s*")
_PLACEHOLDER = re.compile(r"\bnumber(\d+)\b")


def bundled_source() -> Path:
    """The gzip-compressed copy of the published data shipped with the package."""
    return Path(oirl_fast.__file__).parent / "data" / "published"


@dataclass(frozen=True)
class Prompt:
    index: int
    id: str  # the alias in prompts.json: "nan", "CoT", ..., "gpt4_9"
    role: str  # "train" (run on every query) or "heldout" (test queries only)
    text: str


@dataclass(frozen=True)
class Question:
    row: int
    query_id: str
    query: str
    gold: str
    split: str  # the published split: "train" or "test"


# --------------------------------------------------------------------------- files


def _source(source: Path | str | None) -> Path:
    return bundled_source() if source is None else Path(source)


def _locate(source: Path, rel: str) -> Path:
    """``source/rel`` or, if absent, ``source/rel.gz``."""
    path = source / rel
    if path.is_file():
        return path
    gz = path.with_name(path.name + ".gz")
    if gz.is_file():
        return gz
    raise OirlError(f"file not found (nor {gz.name})", path)


@contextmanager
def _open_text(path: Path) -> Iterator[IO[str]]:
    try:
        if path.name.endswith(".gz"):
            fh = gzip.open(path, "rt", encoding="utf-8", newline="")
        else:
            fh = path.open("r", encoding="utf-8", newline="")
    except OSError as exc:
        raise OirlError(f"cannot open: {exc}", path) from None
    try:
        with fh:
            yield fh
    except (OSError, EOFError, UnicodeDecodeError) as exc:  # corrupt gzip, bad encoding
        raise OirlError(f"cannot read: {exc}", path) from None


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:
        raise OirlError(f"cannot read: {exc}", path) from None


def _check_count(path: Path, found: int, expected: int, what: str = "lines") -> None:
    if found < expected:
        raise OirlError(f"truncated: expected {expected} {what}, found {found}", path)
    if found > expected:
        raise OirlError(f"expected {expected} {what}, found {found}", path)


# --------------------------------------------------------------------------- prompts


def load_prompts(source: Path | None = None) -> list[Prompt]:
    """The 16 prompts of ``prompts.json``, in index order."""
    path = _locate(_source(source), f"{LOGS_DIR}/prompts.json")
    with _open_text(path) as fh:
        try:
            raw = json.load(fh)
        except json.JSONDecodeError as exc:
            raise OirlError(f"malformed JSON ({exc.msg})", path, exc.lineno) from None
    if not isinstance(raw, list) or not raw:
        raise OirlError("expected a non-empty JSON list of prompts", path)
    prompts: list[Prompt] = []
    for pos, item in enumerate(raw):
        if not isinstance(item, dict):
            raise OirlError(f"prompt #{pos} is not a JSON object", path)
        try:
            prompt = Prompt(int(item["index"]), str(item["alias"]), str(item["role"]), str(item["text"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise OirlError(f"prompt #{pos} needs index, alias, role and text ({exc!r})", path) from None
        if prompt.index != pos:
            raise OirlError(f"prompt #{pos} has index {prompt.index}; prompts must be in index order", path)
        if prompt.role not in ROLES:
            raise OirlError(f"prompt {prompt.id!r} has role {prompt.role!r}, not one of {ROLES}", path)
        prompts.append(prompt)
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        raise OirlError("prompt aliases are not unique", path)
    return prompts


# --------------------------------------------------------------------------- questions


def _gsm8k_gold(answer: str, path: Path, line: int) -> str:
    if "####" not in answer:
        raise OirlError("answer has no '####' final answer", path, line)
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def _read_gsm8k_file(path: Path, limit: int | None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if limit is not None and len(out) == limit:
                break
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise OirlError(f"malformed JSON ({exc.msg})", path, lineno) from None
            if not isinstance(rec, dict) or not isinstance(rec.get("question"), str) or not isinstance(
                rec.get("answer"), str
            ):
                raise OirlError("each line must be an object with string 'question' and 'answer'", path, lineno)
            out.append((rec["question"], _gsm8k_gold(rec["answer"], path, lineno)))
    return out


def _load_gsm8k(source: Path) -> list[Question]:
    train_path = _locate(source, "gsm8k/train.jsonl")
    train = _read_gsm8k_file(train_path, None)
    _check_count(train_path, len(train), GSM8K_TRAIN, "questions")
    test_path = _locate(source, "gsm8k/test.jsonl")
    test = _read_gsm8k_file(test_path, GSM8K_TEST)
    if len(test) < GSM8K_TEST:
        raise OirlError(f"truncated: expected at least {GSM8K_TEST} questions, found {len(test)}", test_path)
    questions = [Question(i, f"gsm8k:train:{i}", q, g, "train") for i, (q, g) in enumerate(train)]
    questions += [Question(GSM8K_TRAIN + i, f"gsm8k:test:{i}", q, g, "test") for i, (q, g) in enumerate(test)]
    return questions


def _fill_numbers(question: str, numbers: list[str], path: Path, line: int) -> str:
    def sub(match: re.Match) -> str:
        k = int(match.group(1))
        if k >= len(numbers):
            raise OirlError(
                f"placeholder {match.group(0)!r} but 'Numbers' has only {len(numbers)} value(s)", path, line
            )
        return numbers[k]

    return _PLACEHOLDER.sub(sub, question)


def _load_folds(dataset: str, source: Path) -> list[Question]:
    expected, test_start = FOLD_ROWS[dataset], TEST_START[dataset]
    questions: list[Question] = []
    for fold in range(N_FOLDS):
        path = _locate(source, f"{dataset}/fold{fold}_train.csv")
        with _open_text(path) as fh:
            reader = csv.reader(fh)
            try:
                header = next(reader, None)
                if header is None:
                    raise OirlError("empty CSV file (no header)", path)
                missing = [c for c in CSV_COLUMNS if c not in header]
                if missing:
                    raise OirlError(
                        f"wrong column(s): lacks {', '.join(missing)} (header is {', '.join(header)})", path, 1
                    )
                iq, inum, ians = (header.index(c) for c in CSV_COLUMNS)
                width = len(header)
                for rec in reader:
                    line = reader.line_num
                    if len(rec) != width:
                        raise OirlError(f"expected {width} fields, found {len(rec)}", path, line)
                    query = _fill_numbers(rec[iq], rec[inum].split(), path, line)
                    row = len(questions)
                    split = "train" if row < test_start else "test"
                    questions.append(Question(row, f"{dataset}:{row}", query, rec[ians], split))
            except csv.Error as exc:
                raise OirlError(f"malformed CSV ({exc})", path, reader.line_num) from None
    if len(questions) != expected:
        # Name the last fold: the folds together are the unit that is counted.
        what = f"rows in {dataset}/fold0..{N_FOLDS - 1}_train.csv together"
        _check_count(source / dataset, len(questions), expected, what)
    return questions


def load_questions(dataset: str, source: Path | None = None) -> list[Question]:
    """The queries of ``dataset`` in the published query order, with gold answer and split."""
    if dataset not in DATASETS:
        raise OirlError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    src = _source(source)
    if dataset == "gsm8k":
        return _load_gsm8k(src)
    return _load_folds(dataset, src)


# --------------------------------------------------------------------------- logs


def _read_corr(path: Path, expected: int) -> np.ndarray:
    """The ``(i, True)`` lines of a verdict file as a bool array; i must be the 0-based line index."""
    values: list[bool] = []
    match = _CORR_LINE.fullmatch
    with _open_text(path) as fh:
        for i, line in enumerate(fh):
            m = match(line)
            if m is None or int(m.group(1)) != i:
                shown = line.rstrip("\r\n")
                if len(shown) > 60:
                    shown = shown[:57] + "..."
                raise OirlError(f"expected '({i}, True)' or '({i}, False)', found {shown!r}", path, i + 1)
            values.append(m.group(2) == "True")
    _check_count(path, len(values), expected)
    return np.array(values, dtype=bool)


def _read_confidence(path: Path, expected: int) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(_read_bytes(path)), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise OirlError(f"not a readable .npy array: {exc}", path) from None
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise OirlError(f"expected a 1-d numeric array, found {arr.dtype} of shape {arr.shape}", path)
    _check_count(path, len(arr), expected, "values")
    arr = arr.astype(np.float64)
    if not np.all((arr >= 0.0) & (arr <= 1.0)):
        raise OirlError("confidence values must lie in [0, 1]", path)
    return arr


def _corr_files(dataset: str, prompt: Prompt) -> list[tuple[str, str]]:
    """(relative path, which queries it covers: 'all' / 'train' / 'test') for one prompt."""
    base = f"{LOGS_DIR}/corr/{dataset}/llama_{dataset}"
    if prompt.role == "heldout":
        return [(f"{base}_corr_{prompt.id}.txt", "test")]
    if dataset == "gsm8k":
        return [(f"{base}_corr_{prompt.id}.txt", "train"), (f"{base}_test_corr_{prompt.id}.txt", "test")]
    return [(f"{base}_corr_{prompt.id}.txt", "all")]


def import_published(dataset: str, source: Path | None = None, progress: bool = False,
                     answers: bool = False) -> pa.Table:
    """All published (query, prompt, verdict) records of ``dataset`` as a :data:`LOG_SCHEMA` table.

    Train-role prompts give one row per query (train and test); held-out prompts
    one row per test query. ``confidence`` (the LLM's self-critique) is set on
    test rows and null on train rows. ``answers`` (GSM8K only, the one set whose answer
    texts were published) fills ``response`` on the test rows with the LLM's answers,
    so the log can be replayed (``oirl answer --backend replay:LOG``); null elsewhere.
    """
    if answers and dataset != "gsm8k":
        raise OirlError(f"only gsm8k has published answer texts; {dataset} has verdicts only")
    src = _source(source)
    prompts = load_prompts(src)
    questions = load_questions(dataset, src)

    is_test = np.array([q.split == "test" for q in questions], dtype=bool)
    test_idx = np.flatnonzero(is_test)
    train_idx = np.flatnonzero(~is_test)
    all_idx = np.arange(len(questions))
    n_test = len(test_idx)
    covers = {"all": all_idx, "train": train_idx, "test": test_idx}

    jobs = [(p, rel, cover) for p in prompts for rel, cover in _corr_files(dataset, p)]
    bar = ProgressBar(f"importing {dataset}", len(jobs) + len(prompts), enabled=progress)

    q_parts: list[np.ndarray] = []
    p_parts: list[np.ndarray] = []
    correct_parts: list[np.ndarray] = []
    conf_parts: list[np.ndarray] = []
    resp_parts: list[list] = []
    with bar:
        confidence: dict[int, np.ndarray] = {}
        for prompt in prompts:
            rel = f"{LOGS_DIR}/critics/Processed_llama_{dataset}_prompt_{prompt.index}_confidence.npy"
            confidence[prompt.index] = _read_confidence(_locate(src, rel), n_test)
            bar.advance()
        for prompt, rel, cover in jobs:
            idx = covers[cover]
            correct_parts.append(_read_corr(_locate(src, rel), len(idx)))
            q_parts.append(idx)
            p_parts.append(np.full(len(idx), prompt.index, dtype=np.int64))
            # position of each query among the test queries (-1 for train queries)
            conf = np.full(len(idx), np.nan)
            test_pos = np.searchsorted(test_idx, idx)
            hit = is_test[idx]
            conf[hit] = confidence[prompt.index][test_pos[hit]]
            conf_parts.append(conf)
            if answers:
                texts = load_gsm8k_answers(prompt, src)
                resp_parts.append([texts[t] if h else None for t, h in zip(test_pos, hit)])
            bar.advance()

    q_take = pa.array(np.concatenate(q_parts))
    p_take = pa.array(np.concatenate(p_parts))
    conf = np.concatenate(conf_parts)
    n = len(q_take)

    def per_query(values: list) -> pa.Array:
        return pa.array(values, pa.string()).take(q_take)

    def per_prompt(values: list) -> pa.Array:
        return pa.array(values, pa.string()).take(p_take)

    table = pa.table(
        {
            "dataset": pa.repeat(pa.scalar(dataset, pa.string()), n),
            "query_id": per_query([q.query_id for q in questions]),
            "query": per_query([q.query for q in questions]),
            "group": per_query([group_key(q.query) for q in questions]),
            "gold": per_query([q.gold for q in questions]),
            "prompt_id": per_prompt([p.id for p in prompts]),
            "prompt": per_prompt([p.text for p in prompts]),
            "correct": pa.array(np.concatenate(correct_parts)),
            "response": pa.array([r for part in resp_parts for r in part], pa.string()) if answers
            else pa.nulls(n, pa.string()),
            "sample": pa.array(np.zeros(n, dtype=np.int32)),
            "source": pa.repeat(pa.scalar(SOURCE_TAG, pa.string()), n),
            "split": per_query([q.split for q in questions]),
            "confidence": pa.array(conf, pa.float64(), mask=np.isnan(conf)),
        }
    )
    return conform(table, src)


__all__ = [
    "DATASETS",
    "SOURCE_TAG",
    "Prompt",
    "Question",
    "bundled_source",
    "import_published",
    "load_prompts",
    "load_questions",
]


_ANSWER_SEPARATOR = re.compile(r"\n\n=+\n")


def load_gsm8k_answers(prompt: Prompt, source: Path | None = None) -> list[str]:
    """The raw LLM answers of one prompt on the 1000 GSM8K test queries, in query order.

    Each record of ``answers/gsm8k/llama_gsm8k_{test_answers_list_<alias>|answers_list_gpt4_<k>}.txt``
    is a Python tuple literal ``(i, "answer text")``, parsed with ``ast.literal_eval``
    (literals only, never code); a record out of order or malformed is an error
    naming file and record.
    """
    import ast

    src = _source(source)
    name = (f"llama_gsm8k_answers_list_{prompt.id}.txt" if prompt.role == "heldout"
            else f"llama_gsm8k_test_answers_list_{prompt.id}.txt")
    path = _locate(src, f"{LOGS_DIR}/answers/gsm8k/{name}")
    with _open_text(path) as fh:
        text = fh.read()
    answers = []
    for pos, part in enumerate(p for p in _ANSWER_SEPARATOR.split(text) if p.strip()):
        try:
            idx, answer = ast.literal_eval(part.strip())
        except (ValueError, SyntaxError, TypeError) as exc:
            raise OirlError(f"record #{pos} is not an (index, text) tuple literal ({exc})", path) from None
        if idx != pos or not isinstance(answer, str):
            raise OirlError(f"record #{pos} has index {idx!r}; expected {pos} and a text answer", path)
        answers.append(answer)
    _check_count(path, len(answers), GSM8K_TEST, "answers")
    return answers
