"""The application builder named by serve_config.yaml's `import_path`."""

import os
from typing import Any

import ray
from ray.serve import Application

from deployments.ingress import OpenAIIngress
from deployments.llm_server import LLMServer
from deployments.placement import (
    check_gpu_capacity,
    check_vllm_build,
    plan_placement,
)
from deployments.rate_limiter import RateLimiter
from deployments.request_router import request_router_config
from serve_app.core.config import AppConfig
from serve_app.core.constants import INGRESS_REPLICAS
from serve_app.vllm_compat import installed_vllm_builds


def build_app(args: dict[str, Any]) -> Application:
    """OpenAI ingress in front of LLM-server replicas sized for this Ray cluster (serve_config's
    deployment options, where set, override the builder's)."""
    config = AppConfig.from_args(args, os.environ)
    if not ray.is_initialized():
        ray.init()
    accelerator = config.resolve_accelerator(ray.cluster_resources().get("GPU", 0))
    check_vllm_build(accelerator, installed_vllm_builds())
    if accelerator == "gpu" and config.fail_fast_on_missing_gpus:
        check_gpu_capacity(
            config,
            free_gpus=ray.available_resources().get("GPU", 0),
            gpus_per_node=[n["Resources"].get("GPU", 0) for n in ray.nodes() if n["Alive"]],
        )
    placement = plan_placement(config, accelerator)
    llm_server = LLMServer.options(
        user_config=config.live_settings.model_dump(),
        request_router_config=request_router_config(config, accelerator),
        **placement.deployment_options(),
    ).bind(config, accelerator)
    ingress = OpenAIIngress.options(
        num_replicas=INGRESS_REPLICAS[accelerator], user_config=config.rate_limits.model_dump()
    )
    return ingress.bind(llm_server, RateLimiter.bind(), config)
