"""How the one-container entrypoint sizes and configures its Ray head, and what it cleans up
after it (nothing is started)."""

import os
from pathlib import Path

import pytest

from serve_app.runtime.entrypoint import (
    EntrypointSettings,
    container_cpus,
    forget_ray_address,
    ray_address_file,
    ray_env,
    ray_start_command,
    visible_gpus,
)


def test_a_cgroup_v2_cpu_quota_caps_the_cpus(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert container_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert container_cpus(tmp_path) == len(os.sched_getaffinity(0))


def test_a_cgroup_v1_cpu_quota_caps_the_cpus(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    assert container_cpus(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert container_cpus(tmp_path) == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("devices", "gpus"), [("0,1", 2), ("3", 1), ("", 0), ("0,-1,1", 1), ("-1", 0)]
)
def test_cuda_visible_devices_sets_the_gpu_count(devices: str, gpus: int) -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": devices}, nvidia_smi=None) == gpus


def test_without_cuda_visible_devices_nvidia_smi_counts_the_gpus(tmp_path: Path) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '0\\n1\\n2\\n3\\n'\n")
    fake.chmod(0o755)
    assert visible_gpus({}, nvidia_smi=str(fake)) == 4
    failing = tmp_path / "failing-nvidia-smi"
    failing.write_text("#!/bin/sh\necho 'no devices' >&2\nexit 9\n")
    failing.chmod(0o755)
    assert visible_gpus({}, nvidia_smi=str(failing)) == 0
    assert visible_gpus({}, nvidia_smi=None) == 0


def test_ray_head_is_sized_blocking_and_dashboardless_by_default() -> None:
    command = ray_start_command(EntrypointSettings(), "10.0.0.5", 6, 2, 8080)
    assert command[command.index("start") :][:3] == ["start", "--head", "--block"]
    for flag in ("--num-cpus=6", "--num-gpus=2", "--metrics-export-port=8080", "--port=6379"):
        assert flag in command
    assert "--node-ip-address=10.0.0.5" in command
    assert "--include-dashboard=false" in command


def test_ray_start_args_come_last_and_the_dashboard_binds_to_localhost() -> None:
    settings = EntrypointSettings.model_validate(
        {"RAY_DASHBOARD_PORT": "8265", "RAY_START_ARGS": "--num-cpus=7 --temp-dir=/tmp/r"}
    )
    command = ray_start_command(settings, "10.0.0.5", 6, 0, 8080)
    assert command[-2:] == ["--num-cpus=7", "--temp-dir=/tmp/r"]  # click keeps the last value
    assert "--dashboard-host=127.0.0.1" in command
    assert "--dashboard-port=8265" in command


def test_children_get_token_auth_haproxy_no_drain_wait_and_not_an_inherited_ray_address() -> None:
    env = ray_env({"RAY_ADDRESS": "elsewhere:6379", "MODEL_NAME": "m", "API_KEYS": "k"})
    assert env == {
        "RAY_AUTH_MODE": "token",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S": "2",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",
        "MODEL_NAME": "m",
        "API_KEYS": "k",
    }
    assert ray_env({"RAY_AUTH_MODE": "disabled"})["RAY_AUTH_MODE"] == "disabled"


def test_the_environment_can_turn_haproxy_off_and_set_a_drain_wait() -> None:
    assert ray_env({"RAY_SERVE_ENABLE_HA_PROXY": "0"})["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    wait = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "10"}
    assert ray_env(wait).items() >= wait.items()


@pytest.mark.parametrize("args", ["--temp-dir=/tmp/ray-x", "--port=1 --temp-dir /tmp/ray-x"])
def test_the_address_record_is_in_the_temp_dir_ray_start_was_given(args: str) -> None:
    assert ray_address_file(args) == Path("/tmp/ray-x/ray_current_cluster")


def test_without_a_temp_dir_the_address_record_is_in_rays_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert ray_address_file("--port=1") == tmp_path / "ray" / "ray_current_cluster"


def test_only_our_heads_address_record_is_removed(tmp_path: Path) -> None:
    record = tmp_path / "ray_current_cluster"
    record.write_text("10.0.0.1:6379")
    forget_ray_address(record, "10.0.0.2:6379")  # another cluster's: kept
    assert record.exists()
    forget_ray_address(record, "10.0.0.1:6379")
    assert not record.exists()
    forget_ray_address(record, "10.0.0.1:6379")  # already gone: nothing to do
