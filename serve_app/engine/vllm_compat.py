"""The one place that touches vLLM's API, kept to its stable surface (vLLM 0.26 and 0.32).

Engine creation, sampling parameters and the conversion of vLLM's outputs into this
project's engine-neutral `GenerationChunk`s.
"""

from collections.abc import Mapping
from typing import Any, Literal, Protocol

from prometheus_client import REGISTRY
from vllm import AsyncEngineArgs, SamplingParams
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

from serve_app.core.payloads import (
    ChoiceDelta,
    GenerationChunk,
    SamplingSpec,
    TokenLogprob,
    TopLogprob,
)

try:  # vLLM >= 0.32: request errors derive from VLLMClientError, no longer from ValueError.
    from vllm.exceptions import VLLMClientError as _RequestError
except ImportError:  # vLLM 0.26: VLLMValidationError is a ValueError.
    from vllm.exceptions import VLLMValidationError as _RequestError


# What vLLM raises for a request it refuses (bad parameters, unknown token ids...).
REQUEST_ERRORS: tuple[type[Exception], ...] = (ValueError, _RequestError)


EngineMetrics = Literal["ray", "local", "off"]
_KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"


class EngineFactory(Protocol):
    """Makes the engine of an LLM-server replica: `create_engine`, or a fake in unit tests."""

    def __call__(
        self,
        engine_kwargs: Mapping[str, Any],
        placement_group: Any = None,
        metrics: EngineMetrics = "ray",
    ) -> AsyncLLM: ...


def create_engine(
    engine_kwargs: Mapping[str, Any],
    placement_group: Any = None,
    metrics: EngineMetrics = "ray",
) -> AsyncLLM:
    """Start an AsyncLLM; a tensor-parallel engine places its Ray workers in `placement_group`.

    `metrics`: "ray" sends vLLM's own metrics out through Ray's metrics agent (as
    `ray_vllm_*`); "local" keeps vLLM's default loggers, its Prometheus metrics in this
    process's registry (see `local_kv_cache_usage`); "off" records none.
    """
    vllm_config = AsyncEngineArgs(**engine_kwargs).create_engine_config(
        UsageContext.OPENAI_API_SERVER
    )
    if placement_group is not None:
        vllm_config.parallel_config.placement_group = placement_group
    return AsyncLLM.from_vllm_config(
        vllm_config,
        usage_context=UsageContext.OPENAI_API_SERVER,
        stat_loggers=[RayPrometheusStatLogger] if metrics == "ray" else None,
        disable_log_stats=metrics == "off",
    )


def local_kv_cache_usage() -> float | None:
    """The fraction of KV blocks in use, as a "local"-metrics engine of this process last
    reported it (`vllm:kv_cache_usage_perc`); None before its first report."""
    for metric in REGISTRY.collect():
        if metric.name == _KV_CACHE_USAGE:
            return max((sample.value for sample in metric.samples), default=None)
    return None


def kv_cache_tokens(engine: AsyncLLM) -> int:
    """How many tokens the engine's paged KV cache holds (blocks x block size)."""
    cache = engine.vllm_config.cache_config
    return int((cache.num_gpu_blocks or 0) * cache.block_size)


def gpu_memory_utilization(engine: AsyncLLM) -> float:
    return float(engine.vllm_config.cache_config.gpu_memory_utilization)


def max_logprobs(engine: AsyncLLM) -> int:
    return int(engine.model_config.max_logprobs)


def max_model_len(engine: AsyncLLM) -> int:
    return int(engine.model_config.max_model_len)


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


def to_chunk(output: RequestOutput, num_logprobs: int | None) -> GenerationChunk:
    """Convert one DELTA RequestOutput into the choices that advanced in it."""
    return GenerationChunk(
        choices=[_to_delta(completion, num_logprobs) for completion in output.outputs]
    )


def _to_delta(completion: CompletionOutput, num_logprobs: int | None) -> ChoiceDelta:
    logprobs = None
    if num_logprobs is not None and completion.logprobs is not None:
        logprobs = [
            _token_logprob(token_id, position, num_logprobs)
            for token_id, position in zip(completion.token_ids, completion.logprobs, strict=True)
        ]
    return ChoiceDelta(
        index=completion.index,
        text=completion.text,
        num_tokens=len(completion.token_ids),
        logprobs=logprobs,
        finish_reason=completion.finish_reason,
    )


def _token_logprob(token_id: int, position: Mapping[int, Any], num_top: int) -> TokenLogprob:
    sampled = position[token_id]
    ranked = sorted(
        (lp for lp in position.values() if lp.rank is not None and lp.rank <= num_top),
        key=lambda lp: lp.rank,
    )
    return TokenLogprob(
        token=sampled.decoded_token or "",
        logprob=max(sampled.logprob, -9999.0),
        top=[
            TopLogprob(token=lp.decoded_token or "", logprob=max(lp.logprob, -9999.0))
            for lp in ranked
        ],
    )
