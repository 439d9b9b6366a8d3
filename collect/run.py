"""``collect(...)``: run an LLM over queries x prompts x samples and write an oirl log.

Steps: read and check queries, prompts and the grader (nothing written yet); check the
output folder (a folder holding another collection is refused); load the backend;
generate the requests no shard holds yet, ``shard_size`` at a time; grade each answer;
with ``critique``, ask the model how confident it is in its answer; write each batch as a
shard (see :mod:`oirl_fast.collect.shards`); finally merge the shards into
``OUT/logs.parquet`` (LOG_SCHEMA, ``source`` = model name, one row per (query, prompt,
sample)) and return a :class:`CollectSummary` with accuracy per prompt.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..atomic import write_text
from ..errors import OirlError
from ..locks import locks_output
from ..progress import ProgressBar
from ..schema import from_records, group_key, write_logs
from .asking import Ask, LLMAsker
from .backends import Backend, EngineConfig, SamplingConfig, check_lora, check_model, is_local_path, make_backend
from .graders import get_grader
from .requests import build_requests, digest, load_prompt_set, load_queries, request_key
from .shards import LOGS, SUMMARY, ShardStore


@dataclass
class CollectConfig:
    """Everything ``oirl collect`` takes. ``queries``: JSONL path or gsm8k/svamp/mawps; ``prompts``: JSONL path
    or ``published``. ``shard_size``: requests per shard (default 2048 with vLLM, 4 batches with transformers)."""

    model: str
    queries: str
    prompts: str
    out: Path
    backend: str = "vllm"
    samples: int = 1
    temperature: float = 0.6
    top_p: float = 0.9
    max_tokens: int = 512
    seed: int = 0
    chat_template: bool = True
    separator: str = ""
    grader: str = "numeric"
    critique: bool = False
    resume: bool = False
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
    name: str | None = None  # the ``source`` column; default: the model folder's name or hub id

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(self.temperature, self.top_p, self.max_tokens)

    def source_name(self) -> str:
        if self.name:
            return self.name
        base = Path(self.model).expanduser().name if is_local_path(self.model) or Path(self.model).exists() else self.model
        return base if self.lora is None else f"{base}+{Path(self.lora).name}"


@dataclass
class PromptAccuracy:
    """Accuracy of one prompt over all its records (every query and sample)."""

    prompt_id: str
    records: int
    correct: int
    accuracy: float
    mean_confidence: float | None = None


@dataclass
class CollectSummary:
    """What a run did. Rates count only this run's generation (resumed records excluded)."""

    out: str
    logs: str
    model: str
    backend: str
    requests: int
    resumed: int
    generated: int
    tokens: int
    seconds: float
    requests_per_s: float
    tokens_per_s: float
    prompts: list[PromptAccuracy] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def lines_text(self) -> list[str]:
        lines = [
            f"{self.requests} requests ({self.resumed} from earlier shards, {self.generated} generated now) "
            f"-> {self.logs}",
            f"{self.generated} requests in {self.seconds:.1f}s: {self.requests_per_s:.2f} requests/s, "
            f"{self.tokens_per_s:.1f} tokens/s",
            "accuracy per prompt:",
        ]
        for p in self.prompts:
            conf = "" if p.mean_confidence is None else f"  mean confidence {p.mean_confidence:.3f}"
            lines.append(f"  {p.prompt_id:<24} {p.accuracy:.3f}  ({p.correct}/{p.records}){conf}")
        return lines


def _check_config(cfg: CollectConfig) -> None:
    if cfg.samples < 1:
        raise OirlError("--samples must be at least 1")
    if cfg.temperature < 0:
        raise OirlError("--temperature must be >= 0")
    if not 0 < cfg.top_p <= 1:
        raise OirlError("--top-p must lie in (0, 1]")
    if cfg.max_tokens < 1:
        raise OirlError("--max-tokens must be at least 1")
    if cfg.samples > 1 and cfg.temperature == 0:
        raise OirlError("--samples > 1 with --temperature 0 would repeat one greedy answer; raise the temperature")
    if cfg.shard_size is not None and cfg.shard_size < 1:
        raise OirlError("--shard-size must be at least 1")


def manifest_for(cfg: CollectConfig, queries, prompts) -> dict:
    """The run identity written to ``OUT/manifest.json`` (see ``shards.IDENTITY``) plus informative fields."""
    return {
        "model": cfg.model,
        "source": cfg.source_name(),
        "lora": cfg.lora,
        "quantization": cfg.quantization,
        "queries": cfg.queries,
        "queries_sha256": digest(queries),
        "n_queries": len(queries),
        "prompt_set_sha256": digest(prompts),
        "prompt_ids": [p.id for p in prompts],
        "grader": cfg.grader,
        "samples": cfg.samples,
        "sampling": cfg.sampling.to_dict(),
        "seed": cfg.seed,
        "chat_template": cfg.chat_template,
        "separator": cfg.separator,
        "critique": cfg.critique,
        "backend": cfg.backend,
        "dtype": cfg.dtype,
        "tensor_parallel_size": cfg.tensor_parallel_size,
    }


@locks_output(lambda a: a["cfg"].out)
def collect(cfg: CollectConfig, backend: Backend | None = None, progress: bool = False,
            log: Callable[[str], None] = lambda s: None) -> CollectSummary:
    """Collect (query, prompt, sample) records into ``cfg.out``; resumable; returns the summary.

    ``backend``: an already loaded backend (else one is made from ``cfg``). Every check that
    can fail on user input runs before anything under ``cfg.out`` is written.
    """
    _check_config(cfg)
    grader = get_grader(cfg.grader)
    if backend is None:
        check_model(cfg.model)
        check_lora(cfg.lora)
    queries = load_queries(cfg.queries, split=cfg.split, limit=cfg.limit, gold_check=grader.check_gold)
    prompts = load_prompt_set(cfg.prompts)
    store = ShardStore(cfg.out, manifest_for(cfg, queries, prompts))
    store.check(cfg.resume)

    requests = build_requests(len(queries), len(prompts), cfg.samples)
    keys = [request_key(queries[r.query], prompts[r.prompt], r.sample) for r in requests]
    if backend is None and not _all_done(store, keys, cfg.resume):
        backend = backend_for(cfg)
    store.start()
    pending = [i for i, k in enumerate(keys) if k not in store.completed]
    resumed = len(requests) - len(pending)
    if resumed:
        log(f"resuming: {resumed} of {len(requests)} requests already in {len(store.entries)} shard(s)")
    shard_size = cfg.shard_size or (2048 if cfg.backend == "vllm" else 4 * cfg.batch_size)
    source = cfg.source_name()
    asker = LLMAsker(backend, cfg.sampling, seed=cfg.seed, chat_template=cfg.chat_template, separator=cfg.separator,
                     critique=cfg.critique) if backend is not None else None

    t0 = time.perf_counter()
    generated = tokens = 0
    with ProgressBar("collecting", len(requests), enabled=progress, done=resumed, transient=False) as bar:
        for start in range(0, len(pending), shard_size):
            chunk = [requests[i] for i in pending[start:start + shard_size]]
            replies = asker.ask([Ask(queries[r.query], prompts[r.prompt], r.sample) for r in chunk])
            n_tokens = sum(rep.n_tokens for rep in replies)
            records = []
            for r, rep in zip(chunk, replies):
                q, p = queries[r.query], prompts[r.prompt]
                records.append({
                    "dataset": q.dataset, "query_id": q.id, "query": q.query, "group": group_key(q.query),
                    "gold": q.gold, "prompt_id": p.id, "prompt": p.text, "correct": grader(rep.text, q.gold),
                    "response": rep.text, "sample": r.sample, "source": source, "split": q.split,
                    "confidence": rep.confidence,
                })
            store.write_shard(from_records(records), n_tokens)
            generated += len(chunk)
            tokens += n_tokens
            seconds = time.perf_counter() - t0
            bar.advance(len(chunk), note=f"{generated / seconds:.2f} req/s  {tokens / seconds:.1f} tok/s")
    seconds = time.perf_counter() - t0

    table = store.merged()
    if table.num_rows != len(requests) or set(store.completed) != set(keys):
        raise OirlError(f"the shards hold {table.num_rows} records for {len(requests)} requests; "
                        "the collection is damaged", cfg.out)
    logs = write_logs(table, Path(cfg.out) / LOGS)
    summary = CollectSummary(
        out=str(cfg.out), logs=str(logs), model=source, backend=cfg.backend, requests=len(requests),
        resumed=resumed, generated=generated, tokens=tokens, seconds=seconds,
        requests_per_s=generated / seconds if generated else 0.0,
        tokens_per_s=tokens / seconds if generated else 0.0,
        prompts=prompt_accuracy(table),
    )
    write_text(Path(cfg.out) / SUMMARY, json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary


def backend_for(cfg, model: str | None = None) -> Backend:
    """The LLM backend a config names (``backend``, ``model`` unless given, and the engine options ``oirl collect``
    and ``oirl answer`` share: tensor parallelism, dtype, quantization, LoRA, device, batch size, seed, context)."""
    engine = EngineConfig(device=cfg.device, dtype=cfg.dtype, batch_size=cfg.batch_size, lora=cfg.lora,
                          quantization=cfg.quantization, tensor_parallel_size=cfg.tensor_parallel_size,
                          max_model_len=cfg.max_model_len, seed=cfg.seed)
    return make_backend(cfg.backend, model or cfg.model, engine)


def _all_done(store: ShardStore, keys: list, resume: bool) -> bool:
    """Whether a resumed run has nothing left to generate (then no model needs loading)."""
    if not resume or not (store.root / "index.jsonl").is_file():
        return False
    probe = ShardStore(store.root, store.manifest)
    probe.start()
    return set(keys) <= probe.completed


def prompt_accuracy(table) -> list[PromptAccuracy]:
    """Accuracy (and mean critique confidence, where present) per prompt id, in first-seen order."""
    pids = table.column("prompt_id").to_pylist()
    correct = np.array(table.column("correct").to_pylist(), dtype=bool)
    conf = np.array([np.nan if c is None else c for c in table.column("confidence").to_pylist()], dtype=float)
    out = []
    for pid in dict.fromkeys(pids):
        mask = np.array([p == pid for p in pids])
        c = conf[mask]
        out.append(PromptAccuracy(pid, int(mask.sum()), int(correct[mask].sum()), float(correct[mask].mean()),
                                  None if np.isnan(c).all() else float(np.nanmean(c))))
    return out
