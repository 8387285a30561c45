"""This service's own response models: what vLLM's OpenAI layer does not answer.

Requests and responses of the OpenAI endpoints are vLLM's own models
(`serve_app.vllm_compat`); these are the additions: `vllm_stats` in non-streamed responses,
`GET /health` and the JSON summary of `GET /metrics`.
"""

from typing import Literal

from pydantic import BaseModel, Field

from serve_app.core.config import Accelerator


class VllmStats(BaseModel):
    """The original guide's timing block, added to non-streaming responses."""

    inference_time_seconds: float
    tokens_per_second: float
    time_to_first_token_seconds: float | None


class Health(BaseModel):
    """The original guide's /health body, plus how many engine replicas are up."""

    status: Literal["healthy", "unhealthy", "draining"]
    model: str
    tensor_parallel_size: int
    healthy_replicas: int


class MetricsSummary(BaseModel):
    """GET /metrics in JSON: the original guide's fields, then this service's own."""

    model: str
    tensor_parallel_size: int
    gpu_memory_allocated_gb: float | None
    gpu_memory_reserved_gb: float | None
    gpu_name: str | None
    accelerator: Accelerator
    cpu_kvcache_gib: float | None
    kv_cache_tokens: int
    max_model_len: int
    healthy_replicas: int
    in_flight: int = Field(description="Requests this ingress replica is serving now.")
    totals: dict[str, int] = Field(description="Counts since this ingress replica started.")
