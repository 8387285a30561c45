"""What the LLM server tells the ingress about its engine: engine-neutral, HTTP-free.

The generation requests and outputs themselves are vLLM's (`vllm_compat.EngineRequest`,
`RequestOutput`)."""

from typing import Literal

from pydantic import BaseModel, Field

from serve_app.core.config import Accelerator


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
