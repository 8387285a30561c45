"""`python -m serve_app serve`: what `serve run serve_config.yaml` does, plus PORT and fail-fast.

It validates the config, applies PORT to http_options, starts (or joins) Ray and Serve
(a Ray it starts gets SERVE_ENV_DEFAULTS: HAProxy in front of the ingress replicas),
deploys the applications, then waits: it exits non-zero with Serve's message as soon as an
application fails to deploy, and on SIGINT/SIGTERM lets in-flight requests finish, then shuts
Serve down. Where it starts Ray, it first clears an HAProxy an earlier run left on its port,
and starts a watcher that leaves none behind however the runner ends (`leftovers`).
"""

import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import psutil
import ray
from ray import serve
from ray.serve._private import api as serve_api
from ray.serve.schema import ServeDeploySchema

from serve_app.core.constants import (
    APP_IMPORT_PATH,
    DRAINING,
    INGRESS_DEPLOYMENT,
    ONE_HOST_SERVE_ENV_DEFAULTS,
    SERVE_ENV_DEFAULTS,
)
from serve_app.runtime.capacity import UnschedulableConfigError, check_fits
from serve_app.runtime.leftovers import PortInUseError, clear_port, start_watcher
from serve_app.runtime.serve_config import derive, load_deploy_config, metrics_export_port

_POLL_SECONDS = 1.0
# A drain waits this long at most for the ingress's requests in flight (the ingress's
# graceful_shutdown_timeout_s, as shipped), after DRAIN_APPLY_S for Serve to tell it to drain.
DRAIN_TIMEOUT_S = 30.0
DRAIN_APPLY_S = 1.0
# How long a stop waits to see whether the signal stopped its Ray too.
RAY_STOP_WAIT_S = 0.5


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
        try:
            for message in clear_port(config.http_options.port):
                print(message, flush=True)
        except PortInUseError as exc:
            print(exc, file=sys.stderr, flush=True)
            return 1
        start_watcher()
        os.environ.update(with_serve_defaults(os.environ))
        # "local": a new cluster, never the last one `ray start` recorded on this machine,
        # which may be stopped (an entrypoint's head stopped on SIGTERM leaves its address).
        ray.init(
            address="local", namespace="serve", _metrics_export_port=metrics_export_port(config)
        )
    resources = ray.cluster_resources()
    try:
        check_fits(
            config,
            os.environ,
            resources.get("CPU", 0),
            resources.get("GPU", 0),
            fixed_cluster=not os.environ.get("RAY_ADDRESS"),
        )
    except UnschedulableConfigError as exc:
        print(exc, file=sys.stderr, flush=True)
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT):  # drain, then exit 0 (no traceback)
        signal.signal(signum, lambda *_: sys.exit(0))
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
        drain_and_shutdown(config)


def drain_and_shutdown(config: ServeDeploySchema) -> None:
    """Refuse new requests with an OpenAI 503 while those in flight finish, then delete the
    applications and stop Serve.

    Deleting an application stops its replicas gracefully: each finishes the requests it
    holds (up to its `graceful_shutdown_timeout_s`; an LLM replica's include the ingress's
    open streams) while HAProxy still relays them; but HAProxy drops the app's route at once,
    so a new request would get its plain-text 404. So the ingress is told to drain first
    (`refuse_new_requests`). `serve.shutdown()` alone kills HAProxy at once and cuts every
    open stream. A second signal during the drain stops Serve without waiting.
    """
    if own_ray_stopped():
        print("Ray stopped too (a signal to the whole process group): nothing to drain.")
        return
    try:
        try:
            refuse_new_requests(config)
        except Exception as exc:  # the stop goes on: new requests then get HAProxy's 404
            print(f"Could not drain the ingress first: {exc!r}", file=sys.stderr, flush=True)
        for app in config.applications:
            serve.delete(app.name)
    finally:
        serve.shutdown()


def own_ray_stopped(wait_s: float = RAY_STOP_WAIT_S, process: psutil.Process | None = None) -> bool:
    """Whether the Ray this process (or `process`) started has stopped (its GCS exited
    within `wait_s`), as it does when SIGTERM reaches the whole process group: then Serve
    cannot be asked anything (a call would wait a minute for the GCS, then end the
    process)."""
    gcs = [p for p in (process or psutil.Process()).children() if p.name() == "gcs_server"]
    if not gcs:  # a Ray this process joined
        return False
    _, alive = psutil.wait_procs(gcs, timeout=wait_s)
    return not alive


def refuse_new_requests(config: ServeDeploySchema, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
    """Set `draining` on our app's ingress (its user_config, applied live: generation
    requests and /health get 503 `shutting_down` with Retry-After), then wait until no
    ingress replica holds a request (at most `timeout_s`)."""
    app = config.applications[0]
    if app.import_path != APP_IMPORT_PATH:
        return
    deploy(derive(config, deployments={INGRESS_DEPLOYMENT: {"user_config": {DRAINING: True}}}))
    deadline = time.monotonic() + timeout_s
    time.sleep(DRAIN_APPLY_S)  # the controller reconfigures the replicas meanwhile
    while busy := ingress_requests(app.name):
        if time.monotonic() > deadline:
            print(f"Drain: {busy} requests still in flight after {timeout_s:.0f}s", flush=True)
            return
        time.sleep(_POLL_SECONDS / 4)


def ingress_requests(app_name: str) -> int:
    """Requests the app's ingress replicas hold now (Serve's own per-replica count)."""
    tag = f"::{app_name}#{INGRESS_DEPLOYMENT}#"  # SERVE_REPLICA::<app>#<deployment>#<id>
    names = [a["name"] for a in ray.util.list_named_actors(True) if tag in a["name"]]
    replicas = [ray.get_actor(name, namespace="serve") for name in names]
    return sum(ray.get([r.get_num_ongoing_requests.remote() for r in replicas], timeout=10))
