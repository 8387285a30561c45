"""GPU tests: real Ray Serve + vLLM (CUDA) on the GPU test machine; skipped without CUDA.

Each module deploys its own variant of serve_config.yaml and shuts Serve down after, so
the next module finds its GPUs free.
"""

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
import ray
from ray import serve

from serve_app.core.constants import DEFAULT_MODEL_ID, LLM_SERVER_DEPLOYMENT
from serve_app.runtime.runner import deploy, wait_until_running, with_serve_defaults
from serve_app.runtime.serve_config import derive, load_deploy_config
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 900
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip this folder's tests on machines with fewer GPUs than they need (default 1)."""
    here = Path(__file__).parent
    available = gpu_count()
    for item in items:
        if not item.path.is_relative_to(here):
            continue
        needed = next((m.args[0] for m in item.iter_markers("gpus")), 1)
        if available < needed:
            item.add_marker(
                pytest.mark.skip(reason=f"needs {needed} CUDA GPU(s), found {available}")
            )


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    os.environ.update(with_serve_defaults(os.environ))  # as python -m serve_app serve
    ray.init(
        address="local",  # as python -m serve_app serve: never a cluster recorded earlier
        namespace="serve",
        include_dashboard=False,
        _metrics_export_port=free_port(),
    )
    yield
    ray.shutdown()


@contextmanager
def deployed(args: dict[str, Any], llm_server: dict[str, Any] | None = None) -> Iterator[str]:
    """Deploy serve_config.yaml with `args` and LLMServer options overridden; yield its URL."""
    port = free_port()
    shipped = load_deploy_config(REPO / "serve_config.yaml", {"PORT": str(port)})
    config = derive(shipped, args, {LLM_SERVER_DEPLOYMENT: llm_server or {}})
    try:
        deploy(config)
        wait_until_running([config.applications[0].name], STARTUP_TIMEOUT_S)
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def dummy_8b(tmp_path_factory: pytest.TempPathFactory) -> str:
    from benchmarks.lib.dummy_model import build_dummy_model

    return str(build_dummy_model(tmp_path_factory.mktemp("llama3-8b-shape")))


def ask_concurrently(base_url: str, count: int) -> list[str]:
    """The default model's answers to `count` simultaneous greedy chat requests (a 503 fails:
    the client does not retry)."""

    async def main() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=f"{base_url}/v1", api_key="unused", max_retries=0
        ) as client:
            calls = [
                client.chat.completions.create(
                    model=DEFAULT_MODEL_ID, messages=QUESTION, max_tokens=24, temperature=0
                )
                for _ in range(count)
            ]
            return [r.choices[0].message.content for r in await asyncio.gather(*calls)]

    return asyncio.run(main())
