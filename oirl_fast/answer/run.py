"""``answer(...)``: ask an LLM only the prompts a policy picks from the reward model's ranking.

Steps: read and check the policy, the reward model, its prompts and the queries (nothing
written yet); check the output folder (one holding another run is refused); rank every
query's prompts (:func:`oirl_fast.ranking.rank_prompts`); then in rounds, ask every unfinished
query the prompts its policy wants next, ``shard_size`` calls per batch, each batch written as
a shard (:mod:`oirl_fast.collect.shards`, the layout ``oirl collect`` uses) before the next one
is asked. A resumed run reads the calls its shards hold and re-derives each query's state from
them (policies are pure functions of the answers), so after a kill -9 no finished call is asked
again and none is lost. At the end: ``answers.jsonl`` and ``report.json`` (:mod:`.results`).

::

    OUT/manifest.json   reward model, policy, queries, prompts, grader, backend, sampling, seed, ...
    OUT/shards/         the calls: query_id, prompt_id, rank, response, critique, tokens
    OUT/index.jsonl     one line per shard, with its (query_id, prompt_id) keys
    OUT/answers.jsonl   per query: the prompts called in order, answers, values, verdicts, final answer, calls
    OUT/report.json     accuracy, calls per query (and against the best single prompt when asked)
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from ..collect.asking import Ask, LLMAsker
from ..collect.backends import SamplingConfig, check_lora, check_model
from ..collect.graders import get_grader
from ..collect.requests import PromptItem, digest, load_prompt_set, load_queries
from ..collect.run import backend_for
from ..collect.shards import Layout, ShardStore
from ..errors import OirlError
from ..locks import locks_output
from ..progress import ProgressBar
from ..ranking import rank_prompts
from .policies import Call, View, parse_policy
from .replay import ReplayAsker, file_sha256, replay_path
from .results import ANSWERS, FinishedRun, write_results

CALL_SCHEMA = pa.schema([
    pa.field("query_id", pa.string(), nullable=False),
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("rank", pa.int32(), nullable=False),
    pa.field("response", pa.string()),
    pa.field("critique", pa.float64()),
    pa.field("tokens", pa.int64()),
])
IDENTITY = ("format", "model_sha256", "policy", "queries_sha256", "prompt_set_sha256", "prompt_ids", "grader",
            "backend", "replay_sha256", "llm", "lora", "quantization", "sampling", "seed", "chat_template",
            "separator", "critique", "critique_threshold", "best_single")


def _conform_calls(table: pa.Table, path) -> pa.Table:
    missing = [f.name for f in CALL_SCHEMA if f.name not in table.column_names]
    if missing:
        raise OirlError(f"shard lacks column(s) {', '.join(missing)}", path)
    try:
        return table.select(CALL_SCHEMA.names).cast(CALL_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        raise OirlError(f"shard does not hold answer calls ({exc})", path) from None


LAYOUT = Layout("oirl-answer/1", IDENTITY, ("query_id", "prompt_id"), _conform_calls, CALL_SCHEMA.empty_table,
                what="answer run")


@dataclass
class AnswerConfig:
    """Everything ``oirl answer`` takes. ``model``: the reward model artifact; ``backend``: vllm, transformers
    or ``replay:LOG``; ``llm``: the LLM (folder or hub id) for vllm / transformers; ``queries``: JSONL path
    (``answer`` optional) or gsm8k/svamp/mawps; ``prompts``: optional JSONL giving the model's prompts'
    placements; ``best_single``: the prompt id ``compare_best_single`` compares with (default: the best on
    the replay log's training rows)."""

    model: Path
    queries: str
    policy: str
    out: Path
    backend: str = "vllm"
    llm: str | None = None
    prompts: str | None = None
    grader: str = "numeric"
    critique: bool = False
    critique_threshold: float = 0.5
    compare_best_single: bool = False
    best_single: str | None = None
    resume: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int = 0
    chat_template: bool = True
    separator: str = ""
    shard_size: int | None = None
    batch_size: int = 8
    split: str | None = None
    limit: int | None = None
    tensor_parallel_size: int = 1
    dtype: str = "auto"
    quantization: str | None = None
    lora: str | None = None
    max_model_len: int | None = None
    device: str = "auto"
    cache_dir: Path | None = None
    query_fields: object = None  # a QueryFields: --queries is a benchmark file as it is (oirl_fast.query_rows)

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(self.temperature, self.top_p, self.max_tokens)


def _check_config(cfg: AnswerConfig) -> None:
    if cfg.temperature < 0:
        raise OirlError("--temperature must be >= 0")
    if not 0 < cfg.top_p <= 1:
        raise OirlError("--top-p must lie in (0, 1]")
    if cfg.max_tokens < 1:
        raise OirlError("--max-tokens must be at least 1")
    if cfg.shard_size is not None and cfg.shard_size < 1:
        raise OirlError("--shard-size must be at least 1")
    if not 0.0 <= cfg.critique_threshold <= 1.0:
        raise OirlError("--critique-threshold must lie in [0, 1]")


def model_prompts(prompt_ids: list[str], texts: list[str], spec: str | None) -> list[PromptItem]:
    """The reward model's prompts as LLM prompts: appended to the query (as the published logs were made),
    or placed as ``spec`` (a prompts JSONL, or ``published``) says, which must hold each of them, same text."""
    if spec is None:
        return [PromptItem(i, t) for i, t in zip(prompt_ids, texts)]
    given = {p.id: p for p in load_prompt_set(spec)}
    out = []
    for i, t in zip(prompt_ids, texts):
        if i not in given:
            raise OirlError(f"the model's prompt {i!r} is not in the prompts file", spec)
        if given[i].text != t:
            raise OirlError(f"prompt {i!r} has another text than the model's", spec)
        out.append(given[i])
    return out


def _best_single(cfg: AnswerConfig, artifact, replay: Path | None) -> str | None:
    """The best single prompt's id for --compare-best-single: --best-single, else the prompt best on the
    training rows of the replay log under the model's protocol (as ``oirl tradeoff`` takes it)."""
    ids = artifact.metadata.prompt_ids
    if cfg.best_single is not None:
        if cfg.best_single not in ids:
            raise OirlError(f"--best-single {cfg.best_single!r} is not one of the model's prompts {ids}")
        return cfg.best_single
    if not cfg.compare_best_single:
        return None
    if replay is None:
        raise OirlError("--compare-best-single with an LLM backend needs --best-single PROMPT_ID "
                        "(the prompt best on your training rows)")
    from ..schema import read_logs
    from ..splits import Protocol, split_log
    from ..tradeoff_answers import train_accuracy

    acc = train_accuracy(split_log(read_logs(replay), Protocol(**artifact.metadata.protocol)), ids)
    if np.isnan(acc).all():
        raise OirlError("the replay log has no training rows for the model's prompts; pass --best-single", replay)
    return ids[int(np.nanargmax(acc))]


@locks_output(lambda a: a["cfg"].out)
def answer(cfg: AnswerConfig, backend=None, progress: bool = False,
           log: Callable[[str], None] = lambda s: None) -> dict:
    """Answer ``cfg.queries`` with ``cfg.policy`` into ``cfg.out``; resumable; returns the report (a dict).

    ``backend``: an already loaded LLM backend (else one is made from ``cfg`` when a call is needed).
    Every check that can fail on user input runs before anything under ``cfg.out`` is written."""
    from .. import api

    _check_config(cfg)
    grader = get_grader(cfg.grader)
    policy = parse_policy(cfg.policy)
    replay = replay_path(cfg.backend)
    if replay is not None and not replay.is_file():
        raise OirlError("replay log not found", replay)
    if replay is None and backend is None:
        if cfg.llm is None:
            raise OirlError(f"--backend {cfg.backend} needs the LLM: --llm MODEL_FOLDER_OR_HUB_ID")
        check_model(cfg.llm)
        check_lora(cfg.lora)
    model = api.load(cfg.model, cache_dir=cfg.cache_dir, device=cfg.device, progress=progress, log_fn=log)
    prompts = model_prompts(model.prompt_ids, model.prompt_texts, cfg.prompts)
    if policy.max_calls > len(prompts):
        raise OirlError(f"policy {policy.spec} asks up to {policy.max_calls} prompts; the model ranks {len(prompts)}")
    queries = load_queries(cfg.queries, split=cfg.split, limit=cfg.limit, gold_check=grader.check_gold,
                           require_gold=False, fields=cfg.query_fields)
    best_single = _best_single(cfg, model.artifact, replay)
    manifest = {
        "model": str(cfg.model), "model_sha256": file_sha256(Path(cfg.model) / "manifest.json"),
        "policy": policy.spec, "queries": cfg.queries, "queries_sha256": digest(queries), "n_queries": len(queries),
        "prompt_set_sha256": digest(prompts), "prompt_ids": [p.id for p in prompts], "grader": cfg.grader,
        "backend": "replay" if replay else cfg.backend, "replay_log": None if replay is None else str(replay),
        "replay_sha256": None if replay is None else file_sha256(replay),
        "llm": None if replay else cfg.llm, "lora": cfg.lora, "quantization": cfg.quantization,
        "sampling": None if replay else cfg.sampling.to_dict(), "seed": cfg.seed,
        "chat_template": cfg.chat_template, "separator": cfg.separator, "critique": cfg.critique,
        "critique_threshold": cfg.critique_threshold, "best_single": best_single,
    }
    store = ShardStore(cfg.out, manifest, LAYOUT)
    store.check(cfg.resume)

    ranking = rank_prompts(model.scores(model.embed([q.query for q in queries]), dtype=np.float64),
                           model.artifact.model.calibrator)
    # The asker is made before anything is written, so a log that cannot be replayed or an LLM that does not
    # load leaves --out as it was; a finished run (its answers written) resumed again needs none.
    finished = cfg.resume and (Path(cfg.out) / ANSWERS).is_file()
    asker = None
    if replay is not None:
        asker = ReplayAsker(replay, cfg.critique)
    elif not finished:
        asker = LLMAsker(backend or backend_for(cfg, cfg.llm), cfg.sampling, seed=cfg.seed,
                         chat_template=cfg.chat_template, separator=cfg.separator, critique=cfg.critique)
    store.start()
    col = {p.id: j for j, p in enumerate(prompts)}
    qrow = {q.id: u for u, q in enumerate(queries)}
    answered: list[dict[int, tuple[str, float | None]]] = [{} for _ in queries]
    merged = store.merged()
    for qid, pid, response, crit in zip(*(merged.column(c).to_pylist()
                                           for c in ("query_id", "prompt_id", "response", "critique"))):
        if qid not in qrow or pid not in col:
            raise OirlError(f"a shard holds a call ({qid!r}, {pid!r}) outside this run; the answer run is damaged",
                            cfg.out)
        answered[qrow[qid]][col[pid]] = (response, crit)
    resumed = merged.num_rows
    if resumed:
        log(f"resuming: {resumed} calls already in {len(store.entries)} shard(s)")
    rank_of = np.argsort(ranking.order, axis=1)  # rank_of[u, column] = that prompt's rank for query u
    best_col = None if best_single is None else col[best_single]
    views = [View(len(prompts), float(ranking.confidence[u]), cfg.critique_threshold) for u in range(len(queries))]

    def walk(u: int) -> tuple[list[Call], list[int]]:
        """The policy's calls so far on query u, and the prompt columns it needs next ([] = done)."""
        calls: list[Call] = []
        while True:
            cols = [int(ranking.order[u, r]) for r in policy.next_ranks(views[u], calls)]
            if not cols:
                break
            missing = [c for c in cols if c not in answered[u]]
            if missing:
                return calls, missing
            for c in cols:
                response, crit = answered[u][c]
                calls.append(Call(int(rank_of[u, c]), grader.value(response), crit))
        if best_col is not None and best_col not in answered[u]:
            return calls, [best_col]
        return calls, []

    shard_size = cfg.shard_size or (2048 if cfg.backend == "vllm" else 4 * cfg.batch_size)
    made = tokens = 0
    t0 = time.perf_counter()
    open_queries = [u for u in range(len(queries)) if walk(u)[1]]
    with ProgressBar("answering", len(queries), enabled=progress, done=len(queries) - len(open_queries),
                     transient=False) as bar:
        while open_queries:
            todo = [(u, c) for u in open_queries for c in walk(u)[1]]
            if asker is None:
                raise OirlError("the answers were written but calls are missing; the answer run is damaged",
                                cfg.out)
            for start in range(0, len(todo), shard_size):
                chunk = todo[start:start + shard_size]
                replies = asker.ask([Ask(queries[u], prompts[c]) for u, c in chunk])
                n_tokens = sum(r.n_tokens for r in replies)
                store.write_shard(pa.Table.from_pylist([
                    {"query_id": queries[u].id, "prompt_id": prompts[c].id, "rank": int(rank_of[u, c]),
                     "response": r.text, "critique": r.confidence, "tokens": r.n_tokens}
                    for (u, c), r in zip(chunk, replies)], schema=CALL_SCHEMA), n_tokens)
                for (u, c), r in zip(chunk, replies):
                    answered[u][c] = (r.text, r.confidence)
                made += len(chunk)
                tokens += n_tokens
                bar.advance(0, note=f"{made} calls  {made / bar.elapsed:.2f} calls/s")
            still = [u for u in open_queries if walk(u)[1]]
            bar.advance(len(open_queries) - len(still))
            open_queries = still
    seconds = time.perf_counter() - t0
    per_query = [walk(u)[0] for u in range(len(queries))]
    finished = FinishedRun(queries, prompts, ranking, views, per_query, answered)
    return write_results(cfg, policy, grader, finished, best_col,
                         {"calls_made_now": made, "calls_resumed": resumed, "tokens_now": tokens,
                          "seconds": round(seconds, 3), "backend": manifest["backend"]})
