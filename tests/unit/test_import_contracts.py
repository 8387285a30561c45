"""The import contracts of pyproject.toml hold for the tree, and break on a back-edge."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("serve_app", "deployments", "benchmarks")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the tree at `root` (its pyproject.toml, its packages first on the path)."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the packages and pyproject.toml to break."""
    for package in PACKAGES:
        shutil.copytree(
            REPO / package,
            tmp_path / package,
            ignore=shutil.ignore_patterns("__pycache__", "results"),
        )
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    return tmp_path


def add_import(module: Path, statement: str) -> None:
    module.write_text(f"{statement}  # noqa\n{module.read_text()}")


def test_the_tree_keeps_every_contract() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "statement", "contract"),
    [
        ("serve_app/core/config.py", "import deployments.ingress", "Layers"),
        ("serve_app/api/prompts.py", "import serve_app.engine.pacing", "Layers"),
        (
            "serve_app/runtime/runner.py",
            "from benchmarks.lib import report",
            "The service never imports the benchmarks",
        ),
        ("serve_app/api/protocol.py", "import vllm", "Only the vLLM-compat module imports"),
        ("deployments/llm_server.py", "import fastapi", "Nothing HTTP-shaped enters"),
        ("benchmarks/lib/report.py", "import benchmarks.demos.walkthrough", "Benchmark entry"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tree: Path, module: str, statement: str, contract: str
) -> None:
    add_import(tree / module, statement)
    result = lint_imports(tree)
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if " BROKEN" in line]
    assert any(line.startswith(contract) for line in broken), result.stdout
