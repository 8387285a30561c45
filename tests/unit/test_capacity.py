"""The check that a config's replicas fit the Ray cluster before it is deployed."""

from pathlib import Path
from typing import Any

import pytest

from serve_app.core.constants import INGRESS_DEPLOYMENT, LLM_SERVER_DEPLOYMENT
from serve_app.runtime.capacity import UnschedulableConfigError, check_fits
from serve_app.runtime.serve_config import derive, load_deploy_config

REPO = Path(__file__).resolve().parents[2]


def shipped_with(
    llm: dict[str, Any] | None = None,
    ingress: dict[str, Any] | None = None,
    **app_args: Any,
) -> Any:
    shipped = load_deploy_config(REPO / "serve_config.yaml", {})
    deployments = {LLM_SERVER_DEPLOYMENT: llm or {}, INGRESS_DEPLOYMENT: ingress or {}}
    return derive(shipped, app_args, deployments)


def fits(config: Any, cpus: float, gpus: float = 0, fixed_cluster: bool = True) -> None:
    check_fits(config, {}, cpus, gpus, fixed_cluster)


def test_the_shipped_config_fits_two_cores_and_one_gpu():
    fits(shipped_with(), cpus=2)
    fits(shipped_with(), cpus=16, gpus=1)


def test_two_cpu_replicas_and_two_ingress_replicas_on_two_cores_fail_with_the_sum():
    config = shipped_with({"autoscaling_config": {"min_replicas": 2, "max_replicas": 2}})
    with pytest.raises(UnschedulableConfigError, match=r"= 3 CPUs, but the Ray cluster has 2"):
        fits(config, cpus=2)


def test_a_scale_up_that_would_starve_the_ingress_fails_on_a_fixed_cluster_only():
    config = shipped_with({"autoscaling_config": {"min_replicas": 1, "max_replicas": 2}})
    with pytest.raises(UnschedulableConfigError, match="at max_replicas"):
        fits(config, cpus=2)
    fits(config, cpus=2, fixed_cluster=False)  # an autoscaler may add nodes


def test_two_replicas_fit_two_cores_when_the_ingress_reserves_less():
    config = shipped_with(
        {"autoscaling_config": {"min_replicas": 2, "max_replicas": 2}},
        {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0}},
    )
    fits(config, cpus=2)


def test_gpu_replicas_need_their_gpus_or_a_share_of_one():
    two = {"autoscaling_config": {"min_replicas": 2, "max_replicas": 2}}
    with pytest.raises(UnschedulableConfigError, match="= 2 GPUs, but the Ray cluster has 1"):
        fits(shipped_with(two), cpus=16, gpus=1)
    fits(shipped_with(two, gpu_fraction=0.5), cpus=16, gpus=1)


def test_cores_per_cpu_replica_count():
    with pytest.raises(UnschedulableConfigError, match=r"x 2 CPU"):
        fits(shipped_with(cpu_cores_per_replica=2), cpus=2)
