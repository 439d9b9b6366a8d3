"""`oirl answer`: ask an LLM with the prompts a policy picks from a reward model's ranking (registered by oirl_fast.cli)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .cli_common import CacheOpt, cli_errors, err


def register(app: typer.Typer) -> None:
    """Add the ``answer`` command to ``app``."""
    from .answer.policies import policies_help

    @app.command("answer")
    @cli_errors
    def answer_cmd(
        model: Path = typer.Argument(..., help="Reward model artifact (oirl train) whose prompts are ranked."),
        queries: str = typer.Option(
            ..., "--queries", "-q",
            help='JSONL of {"id", "query"} with an optional gold "answer" (graded when given), '
                 "or gsm8k / svamp / mawps (bundled); with --query-field, --id-field or --template a benchmark "
                 "file as it is (JSON lines, plain or gzip, CSV or Parquet).",
        ),
        query_field: str = typer.Option("query", "--query-field", help="The field of --queries holding the query text."),
        id_field: str = typer.Option("id", "--id-field", help="The field of --queries holding each query's id "
                                                              "(a row without one: its row number)."),
        template: Optional[str] = typer.Option(
            None, "--template", help='The query built from several fields of --queries, e.g. "{Body} {Ques}".'),
        policy: str = typer.Option("best", "--policy", "-P", help=policies_help() + "."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder: manifest, shards, answers.jsonl, report.json."),
        backend: str = typer.Option(
            "vllm", "--backend",
            help="vllm, transformers, or replay:LOG (answers from a log's responses, no LLM; a pair the log lacks "
                 "is refused).",
        ),
        llm: Optional[str] = typer.Option(None, "--llm", "-m", help="vllm / transformers: the LLM folder or hub id."),
        prompts: Optional[str] = typer.Option(
            None, "--prompts", "-p",
            help="JSONL of the model's prompts with their placement (as for collect) \\[default: appended to the query].",
        ),
        grader: str = typer.Option("numeric", "--grader", help="numeric, gsm8k, choice or prompt-oirl."),
        critique: bool = typer.Option(False, "--critique",
                                      help="After each answer, ask the model how confident it is (one more call)."),
        critique_threshold: float = typer.Option(
            0.5, "--critique-threshold", help="retry: a critique below this says the answer is wrong."),
        compare_best_single: bool = typer.Option(
            False, "--compare-best-single",
            help="Also ask the best single prompt on every query (reusing the policy's call where it asked it) "
                 "and report the difference."),
        best_single: Optional[str] = typer.Option(
            None, "--best-single",
            help="The best single prompt's id \\[default with replay: the best on the log's training rows]."),
        resume: bool = typer.Option(False, "--resume", help="Continue a run in --out (same model, policy, settings)."),
        temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
        top_p: float = typer.Option(1.0, "--top-p"),
        max_tokens: int = typer.Option(512, "--max-tokens", help="New tokens per answer at most."),
        seed: int = typer.Option(0, "--seed", help="Run seed; each call's seed derives from it and the call."),
        chat_template: bool = typer.Option(True, "--chat-template/--no-chat-template",
                                           help="Apply the tokenizer's chat template."),
        separator: str = typer.Option("", "--separator", help="Between query and prompt text \\[default: none]."),
        shard_size: Optional[int] = typer.Option(
            None, "--shard-size", help="Calls per shard (and per vLLM submission) \\[default: 2048 vllm, 32 transformers]."),
        batch_size: int = typer.Option(8, "--batch-size", help="transformers: prompts per generate call."),
        split: Optional[str] = typer.Option(None, "--split", help="Only queries of this split (e.g. test)."),
        limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N queries."),
        tensor_parallel_size: int = typer.Option(1, "--tensor-parallel-size", "--tp", help="vllm: GPUs per model."),
        dtype: str = typer.Option("auto", "--dtype", help="auto, float16, bfloat16 or float32."),
        quantization: Optional[str] = typer.Option(None, "--quantization", help="vllm: awq, gptq, bitsandbytes, ..."),
        lora: Optional[str] = typer.Option(None, "--lora", help="LoRA adapter folder (vllm LoRARequest; transformers via peft)."),
        max_model_len: Optional[int] = typer.Option(None, "--max-model-len", help="vllm: context length to reserve."),
        device: str = typer.Option("auto", "--device", help="Where to embed, score and (transformers) generate."),
        cache_dir: Optional[Path] = CacheOpt,
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    ):
        """Answer queries asking the LLM only the prompts the policy picks from the reward model's ranking.

        Writes per query the prompts called in order, each answer with its value and verdict, the
        final answer and the number of calls (OUT/answers.jsonl), and OUT/report.json. Calls are
        written in shards as they finish: after a crash or kill, the same command with --resume
        asks only what is missing.
        """
        from .answer.results import report_lines
        from .answer.run import AnswerConfig, answer
        from .errors import OirlError
        from .paths import Output, check_paths
        from .query_rows import QueryFields

        if template is not None and query_field != "query":
            raise OirlError("give either --query-field or --template, not both")
        fields = QueryFields(query_field, id_field, template)

        inputs = {"MODEL": model, "--queries": queries, "--prompts": prompts, "--llm": llm, "--lora": lora,
                  "--cache-dir": cache_dir}
        if backend.startswith("replay:"):
            inputs["replay log"] = backend[len("replay:"):]
        # a bundled set's name (gsm8k, published) or a hub id is not a path here
        check_paths({k: v for k, v in inputs.items() if v is not None and Path(v).exists()},
                    [Output(out, "--out", kind="folder")])
        cfg = AnswerConfig(
            model=model, queries=queries, policy=policy, out=out, backend=backend, llm=llm, prompts=prompts,
            grader=grader, critique=critique, critique_threshold=critique_threshold,
            compare_best_single=compare_best_single, best_single=best_single, resume=resume,
            temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed, chat_template=chat_template,
            separator=separator, shard_size=shard_size, batch_size=batch_size, split=split, limit=limit,
            tensor_parallel_size=tensor_parallel_size, dtype=dtype, quantization=quantization, lora=lora,
            max_model_len=max_model_len, device=device, cache_dir=cache_dir,
            query_fields=None if fields.default else fields,
        )
        try:
            report = answer(cfg, progress=progress, log=lambda s: err.print(s, highlight=False, soft_wrap=True))
        except KeyboardInterrupt:
            err.print(f"interrupted: finished calls are kept in {out}; rerun with --resume to continue",
                      highlight=False)
            raise typer.Exit(130) from None
        for line in report_lines(report):
            err.print(line, highlight=False, soft_wrap=True)
