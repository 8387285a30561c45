"""One owner per concept: OpenAI errors are built in one module, and the wheel ships only the
service (docs/architecture.md)."""

import ast
import tomllib
from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parents[2]
ERRORS_MODULE = REPO / "serve_app" / "core" / "errors.py"


def service_sources() -> list[Path]:
    return [*(REPO / "serve_app").rglob("*.py"), *(REPO / "deployments").rglob("*.py")]


def test_openai_errors_are_built_only_by_the_errors_module() -> None:
    builders = {
        str(source.relative_to(REPO))
        for source in service_sources()
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "OpenAIError"
    }
    assert builders == {str(ERRORS_MODULE.relative_to(REPO))}


def test_the_wheel_ships_the_service_packages_only() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = find_packages(where=str(REPO), include=include)
    assert {p.split(".")[0] for p in packages} == {"serve_app", "deployments"}
    assert {"serve_app.api.middleware", "serve_app.engine", "deployments"} <= set(packages)
