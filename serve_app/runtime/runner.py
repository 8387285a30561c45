"""`python -m serve_app serve`: what `serve run serve_config.yaml` does, plus PORT and fail-fast.

It validates the config, applies PORT to http_options, starts (or joins) Ray and Serve
(a Ray it starts gets SERVE_ENV_DEFAULTS: HAProxy in front of the ingress replicas),
deploys the applications, then waits: it exits non-zero with Serve's message as soon as an
application fails to deploy, and on SIGINT/SIGTERM lets in-flight requests finish, then shuts
Serve down.
"""

import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import ray
from ray import serve
from ray.serve._private import api as serve_api
from ray.serve.schema import ServeDeploySchema

from serve_app.core.constants import ONE_HOST_SERVE_ENV_DEFAULTS, SERVE_ENV_DEFAULTS
from serve_app.runtime.serve_config import load_deploy_config, metrics_export_port

_POLL_SECONDS = 1.0


class DeployFailedError(RuntimeError):
    """An application reached DEPLOY_FAILED; the message is Serve's."""


def with_serve_defaults(env: Mapping[str, str]) -> dict[str, str]:
    """`env` plus the Serve settings this service runs with, where `env` does not set them.

    Serve reads them when it starts, in every Ray process: give them to the process that
    starts Ray (`ray.init` of a new local cluster, or `ray start`).
    """
    return SERVE_ENV_DEFAULTS | ONE_HOST_SERVE_ENV_DEFAULTS | dict(env)


def deploy(config: ServeDeploySchema) -> None:
    """Start Serve with the config's HTTP options on the connected Ray cluster, then deploy."""
    client = serve_api.serve_start(
        http_options=config.http_options.model_dump(),
        proxy_location=config.proxy_location,
        grpc_options=config.grpc_options.model_dump(),
        controller_options=config.controller_options,
    )
    client.deploy_apps(config, _blocking=False)


def app_states(names: list[str]) -> dict[str, tuple[str, str]]:
    """(status, message) of each named application; NOT_STARTED until Serve knows it."""
    apps = serve.status().applications
    return {
        name: (apps[name].status, apps[name].message) if name in apps else ("NOT_STARTED", "")
        for name in names
    }


def wait_until_running(names: list[str], timeout_s: float = float("inf")) -> None:
    """Block until every application is RUNNING; raise as soon as one fails to deploy."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = app_states(names)
        for name, (status, message) in states.items():
            if status == "DEPLOY_FAILED":
                raise DeployFailedError(f"Application '{name}' failed to deploy:\n{message}")
        if all(status == "RUNNING" for status, _ in states.values()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Applications not running after {timeout_s:.0f}s: {states}")
        time.sleep(_POLL_SECONDS)


def run(path: Path) -> int:
    """Deploy and block; the exit code says whether every application kept running."""
    config = load_deploy_config(path, os.environ)
    if address := os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, namespace="serve")
    else:
        os.environ.update(with_serve_defaults(os.environ))
        # "local": a new cluster, never the last one `ray start` recorded on this machine,
        # which may be stopped (an entrypoint's head stopped on SIGTERM leaves its address).
        ray.init(
            address="local", namespace="serve", _metrics_export_port=metrics_export_port(config)
        )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    names = [app.name for app in config.applications]
    try:
        deploy(config)
        wait_until_running(names)
        print(
            f"Serving on http://{config.http_options.host}:{config.http_options.port}", flush=True
        )
        while True:
            for name, (status, message) in app_states(names).items():
                if status in ("DEPLOY_FAILED", "UNHEALTHY"):
                    print(f"Application '{name}' is {status}:\n{message}", flush=True)
            time.sleep(10 * _POLL_SECONDS)
    except DeployFailedError as exc:
        print(exc, file=sys.stderr, flush=True)
        return 1
    finally:
        drain_and_shutdown(names)


def drain_and_shutdown(names: list[str]) -> None:
    """Delete the applications, then stop Serve.

    Deleting an application stops its replicas gracefully: each stops taking requests and
    finishes those in flight (up to its `graceful_shutdown_timeout_s`; an LLM replica's include
    the ingress's open streams) while HAProxy still relays them. `serve.shutdown()` alone kills
    HAProxy at once and cuts every open stream. A second signal during the drain stops Serve
    without waiting.
    """
    try:
        for name in names:
            serve.delete(name)
    finally:
        serve.shutdown()
