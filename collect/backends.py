"""LLM backends for ``oirl collect``: one interface, vLLM for GPUs, transformers for CPU or small GPUs.

A backend turns a batch of already tokenized prompts into one completion each::

    backend.generate(prompts: list[list[int]], params: SamplingConfig, seeds: list[int]) -> list[Generation]

``prompts[i]`` is the full token-id sequence of request i (chat template and BOS
applied by :mod:`oirl_fast.collect.requests` with ``backend.tokenizer``), so both
backends see exactly the same input. The result has one :class:`Generation`
(decoded text, number of generated tokens) per prompt, in order.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

from ..errors import OirlError
from ..extras import require

INSTALL_VLLM = "pip install 'oirl-fast[collect]'"


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling parameters shared by both backends (``temperature`` 0 = greedy)."""

    temperature: float = 0.6
    top_p: float = 0.9
    max_tokens: int = 512

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EngineConfig:
    """How an LLM engine loads and runs (``oirl collect`` and ``oirl answer`` share these options).

    Both backends: ``device`` (auto, cpu, cuda), ``dtype`` (auto: the checkpoint's; float32, float16,
    bfloat16), ``batch_size`` (prompts per ``generate`` batch; vLLM batches on its own), ``lora`` (an
    adapter folder), ``trust_remote_code``. vLLM only (the transformers backend refuses the first two
    when set): ``quantization`` (awq, gptq, bitsandbytes, ...), ``tensor_parallel_size``; vLLM only, and
    not read by the transformers backend: ``max_model_len``, ``gpu_memory_utilization``, ``seed`` (the
    engine's; every request has its own seed besides)."""

    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 8
    lora: str | None = None
    quantization: str | None = None
    tensor_parallel_size: int = 1
    trust_remote_code: bool = False
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    seed: int = 0


@dataclass(frozen=True)
class Generation:
    """One completion: the decoded text (special tokens removed) and how many tokens were generated."""

    text: str
    n_tokens: int


class Backend(Protocol):
    """What :func:`oirl_fast.collect.run.collect` needs from an LLM engine."""

    name: str
    tokenizer: Any  # a Hugging Face tokenizer (encode, decode, apply_chat_template)

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingConfig,
                 seeds: Sequence[int]) -> list[Generation]: ...


def is_local_path(model: str) -> bool:
    """Whether ``model`` is meant as a local folder rather than a hub id such as ``org/name``."""
    return (
        os.path.isabs(model)
        or model.startswith(("./", "../", "~", ".\\", "..\\"))
        or model in (".", "..")
        or model.count("/") > 1
        or "\\" in model
    )


def check_model(model: str) -> None:
    """A model that is a path must exist and be a folder; a hub id is checked when it is loaded."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise OirlError("model path is not a folder (expected a Hugging Face model folder)", model)
        return
    if is_local_path(model):
        raise OirlError("model path does not exist", model)


def check_lora(lora: str | None) -> None:
    if lora is not None and not Path(lora).expanduser().is_dir():
        raise OirlError("LoRA adapter path does not exist or is not a folder", lora)


def make_backend(name: str, model: str, engine: EngineConfig = EngineConfig()) -> "Backend":
    """``vllm`` or ``transformers`` backend for ``model``, loaded and run as ``engine`` says."""
    if name == "vllm":
        return VLLMBackend(model, engine)
    if name == "transformers":
        return TransformersBackend(model, engine)
    raise OirlError(f"unknown backend {name!r}; choose vllm or transformers")


# --------------------------------------------------------------------------- transformers


class TransformersBackend:
    """Plain ``model.generate`` in left-padded batches of ``engine.batch_size`` prompts.

    ``engine`` (:class:`EngineConfig`): ``dtype`` ``auto`` (the checkpoint's), ``float32``, ``float16``
    or ``bfloat16``; ``lora`` a PEFT adapter folder (needs ``peft``). Sampling is seeded per batch
    with the batch's first request seed, so a run is reproducible for the same batches.
    """

    name = "transformers"

    def __init__(self, model: str, engine: EngineConfig = EngineConfig()):
        device, dtype, batch_size, lora = engine.device, engine.dtype, engine.batch_size, engine.lora
        quantization, tensor_parallel_size, trust_remote_code = (engine.quantization, engine.tensor_parallel_size,
                                                                 engine.trust_remote_code)
        torch = require("torch", "the transformers backend", extra="minilm")
        transformers = require("transformers", "the transformers backend", extra="minilm")
        AutoModelForCausalLM, AutoTokenizer = transformers.AutoModelForCausalLM, transformers.AutoTokenizer

        if quantization:
            raise OirlError(f"--quantization {quantization} needs the vllm backend")
        if tensor_parallel_size != 1:
            raise OirlError("--tensor-parallel-size needs the vllm backend")
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.batch_size = batch_size
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype, None)
        if torch_dtype is None:
            raise OirlError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
            self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype,
                                                              trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError) as exc:
            raise OirlError(f"cannot load the model with transformers: {_first_line(exc)}", model) from None
        if lora is not None:
            try:
                from peft import PeftModel
            except ImportError:
                raise OirlError("--lora with the transformers backend needs peft: pip install peft") from None
            self.model = PeftModel.from_pretrained(self.model, lora)
        self.model.to(self.device).eval()
        gen_eos = self.model.generation_config.eos_token_id
        eos = gen_eos if gen_eos is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (min(self.eos_ids) if self.eos_ids else 0)

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingConfig,
                 seeds: Sequence[int]) -> list[Generation]:
        out: list[Generation] = []
        for start in range(0, len(prompts), self.batch_size):
            out += self._batch(prompts[start:start + self.batch_size], params, seeds[start])
        return out

    def _batch(self, prompts: Sequence[Sequence[int]], params: SamplingConfig, seed: int) -> list[Generation]:
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: the new tokens line up at the right
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
        sample = params.temperature > 0
        kwargs = dict(do_sample=sample, max_new_tokens=params.max_tokens, pad_token_id=self.pad_id)
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        torch.manual_seed(seed)
        with torch.no_grad():
            result = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kwargs)
        gens = []
        for row in result[:, width:].tolist():
            n = len(row)
            for j, tok in enumerate(row):
                if tok in self.eos_ids:
                    n = j + 1  # the end-of-sequence token counts as generated; padding after it does not
                    break
            gens.append(Generation(self.tokenizer.decode(row[:n], skip_special_tokens=True), n))
        return gens


# --------------------------------------------------------------------------- vLLM


class VLLMBackend:
    """One offline ``vllm.LLM`` engine; each call submits the whole batch so continuous batching keeps the GPU full.

    ``engine``'s (:class:`EngineConfig`) options pass straight through: ``tensor_parallel_size``,
    ``dtype``, ``quantization`` (``awq``, ``gptq``, ``bitsandbytes``, ...), ``lora`` (adapter folder,
    served with a ``LoRARequest``; its rank is read from ``adapter_config.json``), ``max_model_len``,
    ``gpu_memory_utilization``, ``trust_remote_code``, ``seed``; ``device`` and ``batch_size`` are not
    read (vLLM places and batches on its own). Every request gets its own seed.
    """

    name = "vllm"

    def __init__(self, model: str, engine: EngineConfig = EngineConfig()):
        tensor_parallel_size, dtype, quantization, lora = (engine.tensor_parallel_size, engine.dtype,
                                                           engine.quantization, engine.lora)
        max_model_len, gpu_memory_utilization = engine.max_model_len, engine.gpu_memory_utilization
        trust_remote_code, seed = engine.trust_remote_code, engine.seed
        try:
            from vllm import LLM, SamplingParams
        except ImportError:
            raise OirlError(f"the vllm backend needs vLLM, which is not installed: {INSTALL_VLLM} "
                            "(on a CUDA machine), or use --backend transformers") from None
        self._SamplingParams = SamplingParams
        kwargs: dict = dict(model=model, tensor_parallel_size=tensor_parallel_size, dtype=dtype, seed=seed,
                            gpu_memory_utilization=gpu_memory_utilization, trust_remote_code=trust_remote_code)
        if quantization:
            kwargs["quantization"] = quantization
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        self.lora_request = None
        if lora is not None:
            from vllm.lora.request import LoRARequest

            kwargs.update(enable_lora=True, max_lora_rank=_lora_rank(lora))
            self.lora_request = LoRARequest("adapter", 1, str(Path(lora).expanduser()))
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingConfig,
                 seeds: Sequence[int]) -> list[Generation]:
        sampling = [
            self._SamplingParams(temperature=params.temperature, top_p=params.top_p if params.temperature > 0 else 1.0,
                                 max_tokens=params.max_tokens, seed=int(s))
            for s in seeds
        ]
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], sampling,
                                    lora_request=self.lora_request, use_tqdm=False)
        return [Generation(o.outputs[0].text, len(o.outputs[0].token_ids)) for o in outputs]


def _lora_rank(lora: str) -> int:
    """vLLM must know the largest LoRA rank up front; read it from the adapter (at least vLLM's default 16)."""
    try:
        r = int(json.loads((Path(lora).expanduser() / "adapter_config.json").read_text()).get("r", 16))
    except (OSError, ValueError, TypeError):
        return 16
    return max(16, r)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
