"""deploy/kuberay/rayservice.yaml: the shipped Serve config, a CPU head, autoscaled GPU workers.

The pod templates are validated against Kubernetes' own Pod schema (kubernetes-validate,
offline, strict: unknown fields fail); the RayService fields around them are checked here.
"""

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from serve_app.core.constants import SERVE_ENV_DEFAULTS

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy" / "kuberay" / "rayservice.yaml"
KUBERAY_IMAGE_OF_DOCKERFILE = "Dockerfile.koyeb"


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    return yaml.safe_load(MANIFEST.read_text())


@pytest.fixture(scope="module")
def cluster(rayservice: dict[str, Any]) -> dict[str, Any]:
    return rayservice["spec"]["rayClusterConfig"]


@pytest.fixture(scope="module")
def head(cluster: dict[str, Any]) -> dict[str, Any]:
    return cluster["headGroupSpec"]


@pytest.fixture(scope="module")
def gpu_group(cluster: dict[str, Any]) -> dict[str, Any]:
    (group,) = cluster["workerGroupSpecs"]
    return group


def container(group: dict[str, Any]) -> dict[str, Any]:
    (only,) = group["template"]["spec"]["containers"]
    return only


def ports(group: dict[str, Any]) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container(group)["ports"]}


def test_it_is_a_ray_io_v1_rayservice(rayservice: dict[str, Any]) -> None:
    assert rayservice["apiVersion"] == "ray.io/v1"
    assert rayservice["kind"] == "RayService"
    assert rayservice["metadata"]["name"]


def test_serve_config_v2_is_the_shipped_serve_config(rayservice: dict[str, Any]) -> None:
    serve_config_v2 = rayservice["spec"]["serveConfigV2"]
    assert isinstance(serve_config_v2, str)  # KubeRay takes the Serve config as a YAML string
    shipped = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    assert yaml.safe_load(serve_config_v2) == shipped


def test_the_cluster_autoscales_on_the_shipped_ray_version(cluster: dict[str, Any]) -> None:
    import ray

    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] == ray.__version__


@pytest.mark.parametrize("group_name", ["head", "gpu_group"])
def test_pod_templates_are_valid_kubernetes_pods(group_name: str, request) -> None:
    group = request.getfixturevalue(group_name)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": group_name}}
    pod["spec"] = group["template"]["spec"]
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)


def test_head_has_cpus_for_serve_but_no_gpu(head: dict[str, Any]) -> None:
    assert int(head["rayStartParams"]["num-cpus"]) >= 1
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    resources = container(head)["resources"]
    assert "nvidia.com/gpu" not in resources.get("limits", {})
    assert "nvidia.com/gpu" not in resources.get("requests", {})


def test_head_exposes_serve_metrics_and_the_dashboard(head: dict[str, Any]) -> None:
    assert {"serve": 8000, "metrics": 8080, "dashboard": 8265}.items() <= ports(head).items()
    assert head["rayStartParams"]["metrics-export-port"] == "8080"


def test_gpu_workers_take_one_gpu_each_and_scale_between_bounds(gpu_group: dict[str, Any]) -> None:
    limits = container(gpu_group)["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    assert 0 <= gpu_group["minReplicas"] <= gpu_group["replicas"] <= gpu_group["maxReplicas"]
    assert gpu_group["maxReplicas"] > gpu_group["minReplicas"]  # room for the autoscaler


def test_gpu_workers_serve_and_export_metrics(gpu_group: dict[str, Any]) -> None:
    assert ports(gpu_group) == {"serve": 8000, "metrics": 8080}
    assert gpu_group["rayStartParams"]["metrics-export-port"] == "8080"


def test_gpu_workers_get_shared_memory(gpu_group: dict[str, Any]) -> None:
    mounts = {m["mountPath"]: m["name"] for m in container(gpu_group)["volumeMounts"]}
    volumes = {v["name"]: v for v in gpu_group["template"]["spec"]["volumes"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"


def test_gpu_workers_keep_the_model_in_the_claimed_cache(gpu_group: dict[str, Any]) -> None:
    env = {v["name"]: v.get("value") for v in container(gpu_group)["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container(gpu_group)["volumeMounts"]}
    volumes = {v["name"]: v for v in gpu_group["template"]["spec"]["volumes"]}
    claim = volumes[mounts[env["HF_HOME"]]]["persistentVolumeClaim"]["claimName"]
    pvc = yaml.safe_load((MANIFEST.parent / "model-cache.yaml").read_text())
    assert (pvc["kind"], pvc["metadata"]["name"]) == ("PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # every GPU worker mounts it


def test_head_and_workers_run_one_image_with_one_app_environment(
    head: dict[str, Any], gpu_group: dict[str, Any]
) -> None:
    assert container(head)["image"] == container(gpu_group)["image"]
    assert container(head)["env"] == container(gpu_group)["env"]
    names = {variable["name"] for variable in container(head)["env"]}
    assert {"MODEL_NAME", "TENSOR_PARALLEL_SIZE", "HF_HOME"} <= names


def test_hf_home_matches_the_image(head: dict[str, Any]) -> None:
    env = {v["name"]: v.get("value") for v in container(head)["env"]}
    dockerfile = (REPO / KUBERAY_IMAGE_OF_DOCKERFILE).read_text()
    assert f"HF_HOME={env['HF_HOME']}" in dockerfile


def test_the_cluster_starts_serve_with_our_serve_defaults(head: dict[str, Any]) -> None:
    # KubeRay starts Ray itself, so the pods' environment must carry what serve_app's own
    # runner and entrypoint would add.
    env = {v["name"]: v.get("value") for v in container(head)["env"]}
    assert SERVE_ENV_DEFAULTS.items() <= env.items()
