"""One real deployment per test session: Ray + Serve + vLLM (CPU) + the default model.

The app is deployed from the shipped serve_config.yaml, exactly as `python -m serve_app
serve` does, on a free port.
"""

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import ray
from ray import serve
from ray.serve.schema import ServeDeploySchema

from serve_app.core.constants import DEFAULT_MODEL_ID, INGRESS_DEPLOYMENT, LLM_SERVER_DEPLOYMENT
from serve_app.runtime.runner import deploy, wait_until_running, with_serve_defaults
from serve_app.runtime.serve_config import derive, load_deploy_config
from tests.integration.figures import RECORD_ENV, Figures
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 600
HAPROXY_PORT_VARIABLES = ("RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_HAPROXY_STATS_PORT")


@pytest.fixture(scope="session")
def deploy_config() -> ServeDeploySchema:
    """The shipped serve_config.yaml on a free port: what the session deploys."""
    return load_deploy_config(REPO / "serve_config.yaml", {"PORT": str(free_port())})


@pytest.fixture(scope="session")
def base_url(deploy_config: ServeDeploySchema) -> Iterator[str]:
    os.environ.update(with_serve_defaults(os.environ))  # as python -m serve_app serve
    # HAProxy's own ports, free ones: a `make serve` on this machine keeps the defaults.
    for variable in HAPROXY_PORT_VARIABLES:
        os.environ[variable] = str(free_port())
    ray.init(
        address="local",  # as python -m serve_app serve: never a cluster recorded earlier
        namespace="serve",
        include_dashboard=False,
        _metrics_export_port=free_port(),
    )
    try:
        deploy(deploy_config)
        wait_until_running([app.name for app in deploy_config.applications], STARTUP_TIMEOUT_S)
        yield f"http://127.0.0.1:{deploy_config.http_options.port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def figures() -> Iterator[Figures]:
    """What the tests measure; written to $RECORD_FIGURES (if set) when the session ends."""
    measured = Figures()
    yield measured
    if target := os.environ.get(RECORD_ENV):
        measured.save(Path(target))


@pytest.fixture(scope="session")
def model() -> str:
    return DEFAULT_MODEL_ID


@pytest.fixture(scope="session")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client


def redeploy_llm_server(shipped: ServeDeploySchema, **options: Any) -> None:
    """Deploy the session's config with `options` set on its LLMServer deployment (none: the
    shipped config again), as a user would with `serve deploy` on a running app."""
    deploy(derive(shipped, deployments={LLM_SERVER_DEPLOYMENT: options}))


def redeploy_ingress(shipped: ServeDeploySchema, **options: Any) -> None:
    """The same, with `options` set on the OpenAIIngress deployment."""
    deploy(derive(shipped, deployments={INGRESS_DEPLOYMENT: options}))
