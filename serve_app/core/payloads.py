"""What the ingress and the LLM server exchange: engine-neutral, HTTP-free payloads."""

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from serve_app.core.config import Accelerator


class SamplingSpec(BaseModel):
    """Sampling settings, already validated by the ingress."""

    model_config = ConfigDict(frozen=True)

    max_tokens: int
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = Field(None, description="Top alternatives per token; None: no logprobs.")
    # vLLM extensions.
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int = 0
    ignore_eos: bool = False


class GenerateRequest(BaseModel):
    """One prompt, already tokenized, to generate `sampling.n` completions for."""

    model_config = ConfigDict(frozen=True)

    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingSpec
    dispatched_at: float = Field(
        default_factory=time.time, description="Unix time the ingress sent it (queue wait)."
    )


class TopLogprob(BaseModel):
    token: str
    logprob: float


class TokenLogprob(BaseModel):
    """The sampled token's logprob and the top alternatives at its position."""

    token: str
    logprob: float
    top: list[TopLogprob]


class ChoiceDelta(BaseModel):
    """New output of one completion since the previous chunk."""

    index: int
    text: str
    num_tokens: int
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = Field(None, description="stop, length or abort once done.")


class GenerationChunk(BaseModel):
    """One step of a request's output stream: the deltas of the choices that advanced."""

    choices: list[ChoiceDelta]


class ModelInfo(BaseModel):
    """What the ingress needs to know about the engine behind it."""

    max_model_len: int
    tensor_parallel_size: int
    accelerator: Accelerator
    max_logprobs: int


class EngineStats(BaseModel):
    """An engine replica's resources, for GET /metrics in JSON."""

    accelerator: Accelerator
    tensor_parallel_size: int
    max_model_len: int
    kv_cache_tokens: int
    cpu_kvcache_gib: float | None
    gpu_name: str | None = None
    gpu_count: int | None = None
    gpu_memory_allocated_gb: float | None = Field(None, description="In use on its GPUs now.")
    gpu_memory_reserved_gb: float | None = Field(
        None, description="What vLLM may take: gpu_memory_utilization x total."
    )
    gpu_memory_total_gb: float | None = None
    gpu_memory_scope: Literal["replica", "node"] | None = None
