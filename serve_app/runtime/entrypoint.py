"""`python -m serve_app.runtime.entrypoint [CONFIG]`: the whole service in one container (or
one shell).

It owns the container's lifecycle, in this order:

1. Start a Ray head sized to the container: `ray start --head --block` with `--num-cpus` from
   the CPU quota (cgroup v1/v2, CPU affinity), `--num-gpus` from `CUDA_VISIBLE_DEVICES` or
   `nvidia-smi` (0 without), `--metrics-export-port` from the config's `metrics.export_port`
   (8080 as shipped), the dashboard off (or on 127.0.0.1 with RAY_DASHBOARD_PORT).
2. Run `python -m serve_app serve CONFIG` against that head (RAY_ADDRESS set for it), so
   MODEL_NAME, SERVED_MODEL_NAME, TENSOR_PARALLEL_SIZE, ACCELERATOR, PORT, HF_HOME, HF_TOKEN
   and API_KEYS (enforced by the ingress) reach the app unchanged.
3. Once the app reports RUNNING, wait until GET /health answers 200 and log it. Exit 1 with
   the reason when the app fails to deploy (e.g. the model cannot be loaded: the serve runner
   exits 1 with Serve's message) or is not healthy within STARTUP_TIMEOUT_S.
4. On SIGTERM/SIGINT drain: stop the serve runner (it deletes the app, whose replicas finish
   their in-flight requests within graceful_shutdown_timeout_s, then stops Serve), then the
   Ray head, remove the address record `ray start` left for later `ray.init()` calls, and
   exit 0.

The Ray head runs under `ray start --block` as a child: SIGTERM to that child stops exactly
the Ray processes it started. `ray stop` is never used: it kills every Ray process of the user,
other Ray clusters on the same machine included. Ray's token authentication is on
(RAY_AUTH_MODE=token unless set otherwise): the head and the app share ~/.ray/auth_token,
generated on first start and never printed.

Environment (besides the app's own variables): STARTUP_TIMEOUT_S (1800), SHUTDOWN_TIMEOUT_S
(90, per child), RAY_PORT (GCS port, 6379), RAY_DASHBOARD_PORT (0: no dashboard),
RAY_START_ARGS (extra `ray start` arguments, appended last so they win).
"""

import argparse
import contextlib
import logging
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import ray.util
import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt
from ray._common import utils as ray_utils  # where `ray start` records its address

from serve_app.core.constants import HEALTH_ROUTE
from serve_app.runtime.leftovers import Reaper
from serve_app.runtime.readiness import wait_healthy
from serve_app.runtime.runner import with_serve_defaults
from serve_app.runtime.serve_config import load_deploy_config, metrics_export_port

logger = logging.getLogger("serve_app.runtime.entrypoint")

# `ray` of this interpreter, whatever PATH says.
RAY_CLI = (sys.executable, "-m", "ray.scripts.scripts")
# What `ray start` and `python -m serve_app serve` print once they are up.
RAY_STARTED_MARKER = "Ray runtime started."
APP_RUNNING_MARKER = "Serving on "
RAY_START_TIMEOUT_S = 180.0
POLL_S = 1.0
PROGRESS_LOG_EVERY_S = 60.0


class StartupError(RuntimeError):
    """The service did not come up; the message says why."""


class EntrypointSettings(BaseModel):
    """The entrypoint's own environment variables."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    startup_timeout_s: PositiveFloat = Field(1800.0, alias="STARTUP_TIMEOUT_S")
    shutdown_timeout_s: PositiveFloat = Field(90.0, alias="SHUTDOWN_TIMEOUT_S")
    ray_port: PositiveInt = Field(6379, alias="RAY_PORT")
    ray_dashboard_port: NonNegativeInt = Field(0, alias="RAY_DASHBOARD_PORT")
    ray_start_args: str = Field("", alias="RAY_START_ARGS")


def container_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this container may use: its CPU affinity, capped by a cgroup CPU quota."""
    cpus = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return cpus


def cgroup_cpu_quota(cgroup_root: Path) -> float | None:
    """The CPU quota in CPUs (cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us`); None if unset."""
    v2 = cgroup_root / "cpu.max"
    if v2.is_file():
        quota, period = v2.read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    v1_quota = cgroup_root / "cpu" / "cpu.cfs_quota_us"
    v1_period = cgroup_root / "cpu" / "cpu.cfs_period_us"
    if v1_quota.is_file() and v1_period.is_file():
        quota_us = int(v1_quota.read_text())
        return None if quota_us < 0 else quota_us / int(v1_period.read_text())
    return None


def visible_gpus(env: Mapping[str, str], nvidia_smi: str | None) -> int:
    """GPUs this container may use: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    if (devices := env.get("CUDA_VISIBLE_DEVICES")) is not None:
        count = 0
        for device in devices.split(","):
            if device.strip() in ("", "-1"):  # CUDA stops enumerating at an invalid entry
                break
            count += 1
        return count
    if nvidia_smi is None:
        return 0
    result = subprocess.run(
        [nvidia_smi, "--query-gpu=index", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        logger.warning("nvidia-smi failed (%s); starting Ray without GPUs", result.stderr.strip())
        return 0
    return sum(1 for line in result.stdout.splitlines() if line.strip())


def ray_start_command(
    settings: EntrypointSettings, node_ip: str, cpus: int, gpus: int, metrics_port: int
) -> list[str]:
    """`ray start --head --block` for this container; RAY_START_ARGS come last, so they win."""
    dashboard = (
        [
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={settings.ray_dashboard_port}",
        ]
        if settings.ray_dashboard_port
        else ["--include-dashboard=false"]
    )
    return [
        *RAY_CLI,
        "start",
        "--head",
        "--block",
        f"--node-ip-address={node_ip}",
        f"--port={settings.ray_port}",
        f"--num-cpus={cpus}",
        f"--num-gpus={gpus}",
        f"--metrics-export-port={metrics_port}",
        "--disable-usage-stats",
        *dashboard,
        *shlex.split(settings.ray_start_args),
    ]


def ray_address_file(ray_start_args: str) -> Path:
    """Where `ray start` records its address for later `ray.init()` calls (the
    `ray_current_cluster` file): in the `--temp-dir` of RAY_START_ARGS, else in Ray's default
    temp dir (RAY_TMPDIR, TMPDIR or /tmp, then `ray`)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--temp-dir")
    known, _ = parser.parse_known_args(shlex.split(ray_start_args))
    return Path(ray_utils.get_ray_address_file(known.temp_dir))


def forget_ray_address(address_file: Path, address: str) -> None:
    """Remove the record of our stopped head, as `ray stop` would: a later plain `ray.init()`
    on this machine would try to join it and fail. Another cluster's record stays."""
    with contextlib.suppress(OSError):  # no record, or one we may not remove
        if address_file.read_text().strip() == address:
            address_file.unlink()


def ray_env(env: Mapping[str, str]) -> dict[str, str]:
    """The children's environment: ours, token authentication on unless RAY_AUTH_MODE says
    otherwise, Serve's one-host defaults (`with_serve_defaults`) where unset, and no inherited
    RAY_ADDRESS (the head is ours)."""
    ours = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    return with_serve_defaults({"RAY_AUTH_MODE": "token"} | ours)


def ensure_auth_token(env: Mapping[str, str]) -> None:
    """Create ~/.ray/auth_token if missing (`ray get-auth-token --generate`); never log it."""
    result = subprocess.run(
        [*RAY_CLI, "get-auth-token", "--generate"],
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise StartupError(f"Cannot create Ray's authentication token: {result.stderr.strip()}")


class Child:
    """A child process whose output is forwarded to ours; `ready` is set when a line contains
    `marker`. It runs in its own session: a terminal's Ctrl-C reaches only the entrypoint,
    which then stops the children in order."""

    def __init__(
        self, name: str, command: Sequence[str], env: Mapping[str, str], marker: str
    ) -> None:
        self.name = name
        self.marker = marker
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            command,
            env=dict(env),
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._forward, args=(self.process.stdout,), daemon=True).start()

    def _forward(self, stream: IO[str]) -> None:
        for line in stream:
            sys.stdout.write(line)
            sys.stdout.flush()
            if self.marker in line:
                self.ready.set()

    def exit_code(self) -> int | None:
        return self.process.poll()

    def stop(self, timeout_s: float) -> bool:
        """SIGTERM, then SIGKILL after timeout_s; True if it exited on SIGTERM in time."""
        if self.process.poll() is not None:
            return True
        logger.info("Stopping the %s (SIGTERM)", self.name)
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.error("The %s did not stop within %.0fs: killing it", self.name, timeout_s)
            self.process.kill()
            self.process.wait()
            return False
        return True


def wait_for_ray_head(head: Child, stop: threading.Event) -> None:
    """Block until the head reports it started, or a stop is requested."""
    deadline = time.monotonic() + RAY_START_TIMEOUT_S
    while not head.ready.wait(POLL_S) and not stop.is_set():
        if (code := head.exit_code()) is not None:
            raise StartupError(f"The Ray head exited with code {code} before starting (see above).")
        if time.monotonic() > deadline:
            raise StartupError(f"The Ray head did not start within {RAY_START_TIMEOUT_S:.0f}s.")


def wait_until_healthy(
    app: Child, head: Child, url: str, timeout_s: float, stop: threading.Event
) -> bool:
    """True once GET url answers 200; False if a stop was requested first. Raises
    `StartupError` when a child exits or the timeout passes."""

    def children_alive() -> None:
        if (code := app.exit_code()) is not None:
            raise StartupError(
                f"The application failed to start: `python -m serve_app serve` exited with code "
                f"{code}; its reason is above (e.g. the model could not be loaded)."
            )
        if (code := head.exit_code()) is not None:
            raise StartupError(f"The Ray head exited with code {code} during startup.")

    progress = {"logged": 0.0}

    def log_progress(elapsed: float, status: str) -> None:
        if elapsed - progress["logged"] > PROGRESS_LOG_EVERY_S:
            state = status if app.ready.is_set() else "deploying"
            logger.info("Waiting for GET %s to answer 200 (%.0fs: %s)", url, elapsed, state)
            progress["logged"] = elapsed

    try:
        # Only once the app runs: while it deploys, HAProxy hands requests to Serve's
        # fallback proxy port, which another Serve on this machine may hold.
        elapsed = wait_healthy(
            url,
            timeout_s,
            ready=app.ready.is_set,
            check=children_alive,
            stop=stop,
            on_wait=log_progress,
        )
    except TimeoutError as exc:
        raise StartupError(
            f"{exc}. Raise STARTUP_TIMEOUT_S for large models or slow downloads."
        ) from None
    if elapsed is None:
        return False
    logger.info("Healthy: GET %s answered 200 after %.0fs", url, elapsed)
    return True


def supervise(app: Child, head: Child, stop: threading.Event, reaper: Reaper) -> int:
    """Wait for a stop request (0), or fail (non-zero) when a child dies on its own; note
    the processes under this one meanwhile."""
    while not stop.wait(POLL_S):
        reaper.remember()
        for child in (app, head):
            if (code := child.exit_code()) is not None:
                logger.error("The %s exited on its own with code %s", child.name, code)
                return code or 1
    return 0


def run_app(
    config_path: Path,
    port: int,
    env: Mapping[str, str],
    settings: EntrypointSettings,
    head: Child,
    stop: threading.Event,
    reaper: Reaper,
) -> int:
    """`python -m serve_app serve` on the head: health-gated start, supervision, drain."""
    command = [sys.executable, "-m", "serve_app", "serve", str(config_path)]
    app = Child("Serve app", command, env, APP_RUNNING_MARKER)
    exit_code = 0
    try:
        url = f"http://127.0.0.1:{port}{HEALTH_ROUTE}"
        if wait_until_healthy(app, head, url, settings.startup_timeout_s, stop):
            exit_code = supervise(app, head, stop, reaper)
    finally:
        drained = app.stop(settings.shutdown_timeout_s)
        if stop.is_set() and not (drained and app.exit_code() == 0):
            exit_code = exit_code or 1
    return exit_code


def run(config_path: Path, env: Mapping[str, str], stop: threading.Event) -> int:
    """Start the Ray head and the app, wait for health, supervise; the exit code says how the
    service ended (0: stopped on request and drained cleanly)."""
    settings = EntrypointSettings.model_validate(dict(env))
    config = load_deploy_config(config_path, env)
    node_ip = ray.util.get_node_ip_address()
    cpus, gpus = container_cpus(), visible_gpus(env, shutil.which("nvidia-smi"))
    command = ray_start_command(settings, node_ip, cpus, gpus, metrics_export_port(config))
    head_env = ray_env(env)
    if head_env["RAY_AUTH_MODE"] == "token":
        ensure_auth_token(head_env)
    logger.info("Starting the Ray head: %s", shlex.join(command))
    head = Child("Ray head", command, head_env, RAY_STARTED_MARKER)
    reaper = Reaper()
    exit_code = 0
    try:
        wait_for_ray_head(head, stop)
        if not stop.is_set():
            app_env = {**head_env, "RAY_ADDRESS": f"{node_ip}:{settings.ray_port}"}
            port = config.http_options.port
            exit_code = run_app(config_path, port, app_env, settings, head, stop, reaper)
    finally:
        if not head.stop(settings.shutdown_timeout_s):
            exit_code = exit_code or 1
        if left := reaper.reap():  # Ray stopped before Serve could stop them
            logger.warning("Stopped what the run left running: %s", ", ".join(left))
        forget_ray_address(
            ray_address_file(settings.ray_start_args), f"{node_ip}:{settings.ray_port}"
        )
    return exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.runtime.entrypoint", description=__doc__
    )
    parser.add_argument("config", nargs="?", default="serve_config.yaml", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s entrypoint %(levelname)s %(message)s"
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, _frame: _request_stop(stop, received))
    try:
        return run(args.config, os.environ, stop)
    except StartupError as exc:
        logger.error("%s", exc)
        return 1
    except (OSError, ValueError, yaml.YAMLError) as exc:
        logger.error("Cannot start with %s: %s", args.config, exc)
        return 2


def _request_stop(stop: threading.Event, signum: int) -> None:
    logger.info("Received %s: draining", signal.Signals(signum).name)
    stop.set()


if __name__ == "__main__":
    sys.exit(main())
