"""`oirl collect` and `oirl grade`: make offline logs with an LLM, re-grade stored answers (registered by oirl_fast.cli)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .cli_common import cli_errors, err

def register(app: typer.Typer) -> None:
    """Add the ``collect`` and ``grade`` commands to ``app``."""

    @app.command("collect")
    @cli_errors
    def collect_cmd(
        model: str = typer.Option(..., "--model", "-m", help="Model folder or hub id (Hugging Face layout)."),
        queries: str = typer.Option(
            ..., "--queries", "-q",
            help='JSONL of {"id", "query", "answer"} (optional "dataset", "split"), or gsm8k / svamp / mawps (bundled).',
        ),
        prompts: str = typer.Option(
            ..., "--prompts", "-p",
            help='JSONL of {"id", "text"} (optional "placement": append, prepend, template, system), '
                 "or 'published' (the 16 bundled Prompt-OIRL prompts).",
        ),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder: manifest, shards, index, logs.parquet."),
        backend: str = typer.Option("vllm", "--backend", help="vllm (GPU, pip install 'oirl-fast[collect]') or transformers."),
        samples: int = typer.Option(1, "--samples", "-k", help="Answers per (query, prompt); every sample is kept."),
        temperature: float = typer.Option(0.6, "--temperature", help="0 = greedy."),
        top_p: float = typer.Option(0.9, "--top-p"),
        max_tokens: int = typer.Option(512, "--max-tokens", help="New tokens per answer at most."),
        seed: int = typer.Option(0, "--seed", help="Run seed; each request's seed derives from it and the request."),
        chat_template: bool = typer.Option(True, "--chat-template/--no-chat-template",
                                           help="Apply the tokenizer's chat template (one user turn)."),
        separator: str = typer.Option("", "--separator",
                                      help="Between query and prompt text \\[default: none, as the published logs]."),
        grader: str = typer.Option("numeric", "--grader", help="numeric, gsm8k, choice or prompt-oirl."),
        critique: bool = typer.Option(False, "--critique", help="Ask the model how confident it is; store it as confidence."),
        resume: bool = typer.Option(False, "--resume", help="Continue a collection in --out (same model, prompts, settings)."),
        shard_size: Optional[int] = typer.Option(
            None, "--shard-size", help="Requests per shard (and per vLLM submission) \\[default: 2048 vllm, 32 transformers]."),
        batch_size: int = typer.Option(8, "--batch-size", help="transformers: prompts per generate call."),
        split: Optional[str] = typer.Option(None, "--split", help="Only queries of this split (e.g. test)."),
        limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N queries."),
        tensor_parallel_size: int = typer.Option(1, "--tensor-parallel-size", "--tp", help="vllm: GPUs per model."),
        dtype: str = typer.Option("auto", "--dtype", help="auto, float16, bfloat16 or float32."),
        quantization: Optional[str] = typer.Option(None, "--quantization", help="vllm: awq, gptq, bitsandbytes, ..."),
        lora: Optional[str] = typer.Option(None, "--lora", help="LoRA adapter folder (vllm LoRARequest; transformers via peft)."),
        max_model_len: Optional[int] = typer.Option(None, "--max-model-len", help="vllm: context length to reserve."),
        device: str = typer.Option("auto", "--device", help="transformers: auto, cpu or cuda."),
        name: Optional[str] = typer.Option(None, "--name", help="The 'source' written on every record \\[default: model name]."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    ):
        """Run an LLM over queries x prompts (x samples), grade the answers, and write an oirl log.

        Shards are written as they finish; after a crash or kill, the same command with
        --resume continues without repeating or losing a request. The merged log is
        OUT/logs.parquet, ready for embed / train / evaluate / score.
        """
        from .collect.run import CollectConfig, collect
        from .paths import Output, check_paths

        inputs = {"--queries": queries, "--prompts": prompts, "--model": model, "--lora": lora}
        # a bundled set's name (gsm8k, published) or a hub id is not a path here
        check_paths({k: v for k, v in inputs.items() if v is not None and Path(v).exists()},
                    [Output(out, "--out", kind="folder")])
        cfg = CollectConfig(
            model=model, queries=queries, prompts=prompts, out=out, backend=backend, samples=samples,
            temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed, chat_template=chat_template,
            separator=separator, grader=grader, critique=critique, resume=resume, shard_size=shard_size,
            batch_size=batch_size, split=split, limit=limit, tensor_parallel_size=tensor_parallel_size, dtype=dtype,
            quantization=quantization, lora=lora, max_model_len=max_model_len, device=device, name=name,
        )
        try:
            summary = collect(cfg, progress=progress, log=lambda s: err.print(s, highlight=False, soft_wrap=True))
        except KeyboardInterrupt:
            err.print(f"interrupted: finished shards are kept in {out}; rerun with --resume to continue", highlight=False)
            raise typer.Exit(130) from None
        for line in summary.lines_text():
            err.print(line, highlight=False, soft_wrap=True)

    @app.command("grade")
    @cli_errors
    def grade_cmd(
        in_path: Path = typer.Option(
            ..., "--in", "-i",
            help="A log with responses (.parquet/.jsonl), or published GSM8K answer files "
                 "(<data>/prompt_oirl_llama2/answers/gsm8k, or one file in it).",
        ),
        grader: str = typer.Option("numeric", "--grader", help="numeric, gsm8k, choice or prompt-oirl."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the re-graded log here (.parquet or .jsonl)."),
        summary_json: Optional[Path] = typer.Option(None, "--summary", help="Write the counts (and examples) as JSON here."),
        examples: int = typer.Option(5, "--examples", min=0, help="Print this many disagreements."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    ):
        """Re-grade stored responses with a grader, without calling the LLM; count agreements with the old verdicts."""
        from .atomic import write_text
        from .collect.graders import get_grader
        from .collect.regrade import regrade_path
        from .paths import JSON_SUFFIXES, LOG_SUFFIXES, Output, check_paths
        from .schema import write_logs

        check_paths({"--in": in_path}, [Output(out, "--out", LOG_SUFFIXES), Output(summary_json, "--summary", JSON_SUFFIXES)])
        table, summary = regrade_path(in_path, get_grader(grader), n_examples=max(examples, 20))
        if out is not None:
            write_logs(table, out)
            err.print(f"wrote {table.num_rows} re-graded records to {out}", highlight=False)
        if summary_json is not None:
            write_text(summary_json, json.dumps(summary.to_dict(), indent=2) + "\n")
        if as_json:
            print(json.dumps(summary.to_dict(), indent=2))
            return
        for line in summary.lines_text():
            print(line)
        for d in summary.examples[:examples]:
            tail = d.response_tail.replace("\n", " ")
            print(f"  {d.query_id} / {d.prompt_id}: gold {d.gold}, was {d.old}, now {d.new}: ...{tail[-100:]}")
