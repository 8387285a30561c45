"""The demos' direct engine access: one vLLM engine outside Ray Serve, driven request by request.

The walkthrough (`benchmarks.demos.walkthrough`) and the optimisation benchmarks (continuous
batching, paged attention, prefix caching) time the engine itself, without the HTTP service
in front of it. Engine creation, sampling parameters and the engine's KV usage go through
`serve_app.vllm_compat` (`create_engine(..., metrics="local")`, `sampling_params`,
`local_kv_cache_usage`) with the service's own engine arguments (`build_engine_kwargs`);
everything else here keeps to vLLM's stable surface:

- `AsyncLLM.generate` (which aborts the request when its consumer is cancelled),
- `engine.vllm_config` (cache, model and scheduler configs of the running engine),
- `AsyncLLM.reset_prefix_cache`,
- the public `SamplingParams.skip_reading_prefix_cache` field and
  `RequestOutput.num_cached_tokens`.

These helpers may move into `vllm_compat` once the service itself needs them.
"""

import argparse
import asyncio
import gc
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import BaseModel, Field
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM

from benchmarks.lib.report import Provenance, default_out, detect_accelerator, provenance
from benchmarks.lib.sampling import SamplingSpec
from serve_app import vllm_compat
from serve_app.core.config import Accelerator, AppConfig
from serve_app.core.constants import DEFAULT_MODEL_ID
from serve_app.engine.engine_args import build_engine_kwargs

T = TypeVar("T")
_WARMUP_PROMPT = [1, 2, 3, 4]


class KVCacheLayout(BaseModel):
    """The running engine's paged KV cache, read from its `vllm_config`."""

    block_size: int = Field(description="Tokens per KV block.")
    num_blocks: int = Field(
        description="KV blocks the engine allocated (under TP each GPU holds its heads' share)."
    )
    max_model_len: int
    max_num_seqs: int = Field(description="Most sequences the scheduler runs at once.")
    num_layers: int
    num_kv_heads: int = Field(description="Across all tensor-parallel ranks.")
    head_dim: int
    dtype_bytes: int = Field(description="Bytes per KV element (the cache dtype).")

    @property
    def kv_bytes_per_token(self) -> int:
        """2 (K and V) x layers x KV heads x head dim x dtype bytes (standard MHA/GQA)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    def blocks_for(self, tokens: int) -> int:
        """Blocks PagedAttention holds for a sequence of `tokens` tokens: ceil(tokens / block)."""
        return -(-tokens // self.block_size)

    def paged_sequences(self, tokens: int) -> int:
        """Sequences of `tokens` tokens the paged cache holds at once (scheduler cap included)."""
        return min(self.num_blocks // self.blocks_for(tokens), self.max_num_seqs)

    def contiguous_sequences(self) -> int:
        """Sequences the same memory holds when each preallocates max_model_len contiguously."""
        return self.capacity_tokens // self.max_model_len


def kv_cache_layout(engine: AsyncLLM) -> KVCacheLayout:
    config = engine.vllm_config
    model, cache = config.model_config, config.cache_config
    if cache.cache_dtype == "auto":
        dtype_bytes = model.dtype.itemsize
    elif str(cache.cache_dtype).startswith("fp8"):
        dtype_bytes = 1
    else:
        dtype_bytes = getattr(torch, str(cache.cache_dtype)).itemsize
    return KVCacheLayout(
        block_size=cache.block_size,
        num_blocks=cache.num_gpu_blocks or 0,
        max_model_len=model.max_model_len,
        max_num_seqs=config.scheduler_config.max_num_seqs,
        num_layers=model.get_total_num_hidden_layers(),
        num_kv_heads=model.get_total_num_kv_heads(),
        head_dim=model.get_head_size(),
        dtype_bytes=dtype_bytes,
    )


def sampling_params(spec: SamplingSpec) -> SamplingParams:
    """vLLM sampling parameters streaming only new output (DELTA) at each step."""
    optional = {
        "top_k": spec.top_k,
        "min_p": spec.min_p,
        "repetition_penalty": spec.repetition_penalty,
        "logprobs": spec.logprobs,
    }
    return SamplingParams(
        n=spec.n,
        max_tokens=spec.max_tokens,
        temperature=spec.temperature,
        top_p=spec.top_p,
        seed=spec.seed,
        stop=list(spec.stop),
        presence_penalty=spec.presence_penalty,
        frequency_penalty=spec.frequency_penalty,
        min_tokens=spec.min_tokens,
        ignore_eos=spec.ignore_eos,
        output_kind=RequestOutputKind.DELTA,
        **{key: value for key, value in optional.items() if value is not None},
    )


class LabRun(BaseModel):
    """One request's outcome; times in seconds from the start of its run."""

    prompt_tokens: int
    output_tokens: int
    cached_prompt_tokens: int = Field(description="Prompt tokens served from the prefix cache.")
    text: str
    finish_reason: str | None
    submitted_s: float
    first_token_s: float | None
    finished_s: float
    token_times_s: list[float] = Field(
        default_factory=list, exclude=True, description="Arrival of each output token."
    )

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.submitted_s

    @property
    def latency_s(self) -> float:
        return self.finished_s - self.submitted_s

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.latency_s if self.latency_s > 0 else 0.0


@dataclass
class Lab:
    """A started engine, its model's tokenizer, and how long it took to start."""

    engine: AsyncLLM
    tokenizer: PreTrainedTokenizerBase
    accelerator: Accelerator
    startup_s: float
    config: AppConfig

    def chat_prompt(self, text: str, system: str | None = None) -> list[int]:
        """Token ids of one user message (after an optional system one) in the chat template."""
        messages = [{"role": "user", "content": text}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        rendered = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return self.tokenizer.encode(rendered, add_special_tokens=False)

    def kv_layout(self) -> KVCacheLayout:
        return kv_cache_layout(self.engine)

    async def complete(
        self,
        prompt_token_ids: Sequence[int],
        spec: SamplingSpec,
        origin: float,
        read_prefix_cache: bool = True,
        on_text: Callable[[str], None] | None = None,
    ) -> LabRun:
        """Run one request to the end; `origin` is the run's `time.perf_counter()` start.

        `read_prefix_cache=False` makes the engine compute the whole prompt even when its
        prefix is cached: prefix caching off, for this request only. `on_text` sees each
        new piece of text as it arrives.
        """
        params = sampling_params(spec)
        if not read_prefix_cache:
            params.skip_reading_prefix_cache = True
        submitted = time.perf_counter() - origin
        token_times: list[float] = []
        pieces: list[str] = []
        finish_reason = None
        cached = 0
        stream = self.engine.generate(
            {"prompt_token_ids": list(prompt_token_ids)}, params, uuid.uuid4().hex
        )
        async for output in stream:
            now = time.perf_counter() - origin
            choice = output.outputs[0]
            token_times.extend([now] * len(choice.token_ids))
            pieces.append(choice.text)
            if on_text is not None and choice.text:
                on_text(choice.text)
            finish_reason = choice.finish_reason or finish_reason
            cached = output.num_cached_tokens or cached
        return LabRun(
            prompt_tokens=len(prompt_token_ids),
            output_tokens=len(token_times),
            cached_prompt_tokens=cached,
            text="".join(pieces),
            finish_reason=finish_reason,
            submitted_s=submitted,
            first_token_s=token_times[0] if token_times else None,
            finished_s=time.perf_counter() - origin,
            token_times_s=token_times,
        )

    async def complete_all(
        self,
        prompts: Sequence[Sequence[int]],
        specs: Sequence[SamplingSpec],
        origin: float,
        read_prefix_cache: bool = True,
    ) -> list[LabRun]:
        """Submit every request at once and let the engine batch them; results in order."""
        return await asyncio.gather(
            *(
                self.complete(prompt, spec, origin, read_prefix_cache)
                for prompt, spec in zip(prompts, specs, strict=True)
            )
        )

    async def warm_up(self) -> None:
        """One short request: the first forward pass pays for lazy set-up, not the figures."""
        await self.complete(_WARMUP_PROMPT, SamplingSpec(max_tokens=4), time.perf_counter())

    async def reset_prefix_cache(self) -> None:
        """Forget every cached prefix, so the next run starts cold."""
        if not await self.engine.reset_prefix_cache():
            raise RuntimeError("the engine refused to reset its prefix cache")


@asynccontextmanager
async def open_lab(config: AppConfig) -> AsyncIterator[Lab]:
    """Start an engine with the service's engine arguments for `config`; shut it down on exit."""
    accelerator = detect_accelerator()
    kwargs = build_engine_kwargs(config, accelerator)
    start = time.perf_counter()
    engine = vllm_compat.create_engine(kwargs, metrics="local")
    startup_s = time.perf_counter() - start
    try:
        tokenizer = AutoTokenizer.from_pretrained(kwargs["tokenizer"])
        yield Lab(engine, tokenizer, accelerator, startup_s, config)
    finally:
        engine.shutdown()


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run`, then collect the shut-down engine while Python is still whole.

    AsyncLLM's `__del__` calls `shutdown` again; left to interpreter exit, that fails with a
    TypeError from half-torn-down modules.
    """
    result = asyncio.run(coroutine)
    gc.collect()
    return result


def demo_parser(module: str, doc: str, repeats: bool = True) -> argparse.ArgumentParser:
    """An optimisation benchmark's command line: engine options, `--quick`, `--out`."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL_ID, help="Hugging Face id or path")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument(
        "--engine-kwargs", type=_json_object, default={}, help="extra AsyncEngineArgs (JSON)"
    )
    parser.add_argument("--quick", action="store_true", help="CI-sized workload")
    if repeats:
        parser.add_argument("--repeats", type=int, help="override the workload's repeats")
    parser.add_argument(
        "--out", type=Path, help="default: benchmarks/results/<machine>/<date>-<demo>"
    )
    return parser


@asynccontextmanager
async def demo_lab(args: argparse.Namespace) -> AsyncIterator[Lab]:
    """A warmed-up engine for a demo's command-line engine options."""
    config = AppConfig(
        model=args.model,
        tensor_parallel_size=args.tensor_parallel_size,
        engine_kwargs=args.engine_kwargs,
    )
    async with open_lab(config) as lab:
        await lab.warm_up()
        yield lab


def _json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


class DemoResult(Provenance):
    """What every demo's JSON starts with: its provenance, the model and the accelerator."""

    model: str
    accelerator: Accelerator


def result_head(module: str, argv: Sequence[str], lab: Lab, model: str) -> dict[str, Any]:
    """The `DemoResult` fields of a run of `python -m module argv` on `lab`."""
    app_config = lab.config.model_dump(mode="json")
    return provenance(module, argv, app_config) | {"model": model, "accelerator": lab.accelerator}


R = TypeVar("R", bound=BaseModel)
W = TypeVar("W", bound=BaseModel)


def chosen_workload(args: argparse.Namespace, full: W, quick: W) -> W:
    """The `--quick` or full workload, with `--repeats` (where the demo has it) applied."""
    workload = quick if args.quick else full
    repeats = getattr(args, "repeats", None)
    return workload.model_copy(update={"repeats": repeats}) if repeats else workload


def save(result: R, out: Path | None, name: str, plot: Callable[[R, Path], None]) -> Path:
    """Write `name`.json and `name`.png under `out` (default: `report.default_out(name)`)."""
    out = out or default_out(name.replace("_", "-"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(result.model_dump_json(indent=2))
    plot(result, out / f"{name}.png")
    return path
