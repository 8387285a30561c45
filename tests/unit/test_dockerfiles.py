"""Dockerfile.cpu and Dockerfile.koyeb: layers that rebuild cheaply, a context that holds what
they copy. Dependencies come from the lock alone, then the model, then the source: a code edit
reuses the dependency and model layers (no reinstall, no model download or push)."""

import fnmatch
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCK_OF = {"Dockerfile.cpu": "constraints/cpu.txt", "Dockerfile.koyeb": "constraints/gpu.txt"}
# What the default model's conversion imports, copied before the rest of the source.
CONVERSION_MODULES = {
    "serve_app/__init__.py",
    "serve_app/core/__init__.py",
    "serve_app/core/constants.py",
    "serve_app/core/default_model.py",
}

pytestmark = pytest.mark.parametrize("dockerfile", sorted(LOCK_OF))


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    lines = [
        line
        for line in (REPO / dockerfile).read_text().splitlines()
        if not line.lstrip().startswith("#")
    ]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [
        (keyword.upper(), rest) for keyword, rest in re.findall(r"^(\w+)\s+(.*)$", joined, re.M)
    ]


def copied(arguments: str) -> list[str]:
    """The sources of a COPY (not its destination, nor its --flags)."""
    return [word for word in arguments.split() if not word.startswith("--")][:-1]


def first(steps: list[tuple[str, str]], keyword: str, text: str) -> int:
    return next(i for i, (kw, rest) in enumerate(steps) if kw == keyword and text in rest)


def test_dependencies_install_from_the_lock_alone(dockerfile: str) -> None:
    steps = instructions(dockerfile)
    install = first(steps, "RUN", "pip install")
    sources = [src for kw, rest in steps[:install] if kw == "COPY" for src in copied(rest)]
    assert sources == [LOCK_OF[dockerfile], "constraints/bundled-model.txt"]
    assert f"-r {LOCK_OF[dockerfile]}" in steps[install][1]


def test_the_model_is_baked_before_the_source_is_copied(dockerfile: str) -> None:
    steps = instructions(dockerfile)
    download = first(steps, "RUN", "snapshot_download")
    conversion = first(steps, "RUN", "prepare_default_model")
    source = first(steps, "COPY", "serve_app ./serve_app")
    assert first(steps, "RUN", "pip install") < download < conversion < source
    between = [copied(rest) for kw, rest in steps[download:conversion] if kw == "COPY"]
    assert {src for sources in between for src in sources} == CONVERSION_MODULES
    assert not [rest for kw, rest in steps[:download] if kw == "COPY" and "serve_app" in rest]


def test_the_model_is_baked_as_the_user_that_serves(dockerfile: str) -> None:
    steps = instructions(dockerfile)
    users = [(i, rest) for i, (kw, rest) in enumerate(steps) if kw == "USER"]
    before_download = [rest for i, rest in users if i < first(steps, "RUN", "snapshot_download")]
    assert before_download[-1] == users[-1][1] == "1001:1001"


def test_every_copied_path_is_in_the_build_context(dockerfile: str) -> None:
    rules = (REPO / ".dockerignore").read_text().splitlines()
    allowed = [rule[1:].rstrip("/") for rule in rules if rule.startswith("!")]
    for kw, rest in instructions(dockerfile):
        if kw == "COPY" and "--from" not in rest:
            for source in copied(rest):
                assert any(
                    fnmatch.fnmatch(source, rule) or source.startswith(rule + "/")
                    for rule in allowed
                ), source
                assert (REPO / source).exists(), source
