"""The one-container entrypoint, run as the images run it: `python -m serve_app.runtime.entrypoint`.

The tests start the entrypoint as a subprocess with a Ray head of its own (free ports, its
own temp dir), independent of the session's `base_url` deployment, and check how it ends.
The default model's converted folder in the default cache is reused. How the entrypoint sizes
its Ray head is in tests/unit/test_entrypoint.py.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import ray.util
import yaml

from serve_app.core.constants import DEFAULT_MODEL_ID
from tests.integration.test_prometheus import (
    APP_SCRAPE_CONFIG,
    REQUIRE_ENV,
    _fast,
    _run_prometheus,
)
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 600  # a bound for a loaded machine; about 2 minutes when idle
EXIT_TIMEOUT_S = 150
RAY_GONE_TIMEOUT_S = 30
DRAINED_STREAM_TOKENS = 400  # several seconds on CPU: the stream is in flight at SIGTERM
DRAIN_NOTICE_TIMEOUT_S = 10


@dataclass
class Entrypoint:
    process: subprocess.Popen[bytes]
    log: Path
    http_port: int
    metrics_port: int
    ray_port: int
    ray_temp: str

    def ray_left_running(self) -> list[str]:
        """Command lines of processes still using this entrypoint's Ray temp dir (GCS, raylet,
        agents name it in their arguments)."""
        commands = (" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))
        return [command for command in commands if self.ray_temp in command]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tree(self) -> list[psutil.Process]:
        """The entrypoint's descendants: the Ray head, every Ray process, replicas, engines."""
        return psutil.Process(self.process.pid).children(recursive=True)

    def wait_healthy(self) -> None:
        """Until the entrypoint itself has seen /health answer 200 (and says so)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"exited early:\n{self.output()[-5000:]}"
            if "entrypoint INFO Healthy: GET" in self.output():
                return
            time.sleep(1)
        pytest.fail(f"not healthy within {STARTUP_TIMEOUT_S}s:\n{self.output()[-5000:]}")


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running (zombies waiting for a reaper count as gone)."""
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def _wait_gone(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    while (alive := _alive(processes)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return alive


def _wait_gone_by_name(entrypoint: Entrypoint) -> list[str]:
    deadline = time.monotonic() + RAY_GONE_TIMEOUT_S
    while (left := entrypoint.ray_left_running()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def _accepts_connections(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((_node_ip(), port)) == 0


def _node_ip() -> str:
    return ray.util.get_node_ip_address()


def _first_refusal(entrypoint: Entrypoint, key: str) -> httpx.Response:
    """The first answer other than 200 to short requests sent one after another (bounded)."""
    body = {"model": DEFAULT_MODEL_ID, "prompt": "Hi", "max_tokens": 1}
    headers = {"Authorization": f"Bearer {key}"}
    deadline = time.monotonic() + DRAIN_NOTICE_TIMEOUT_S
    while time.monotonic() < deadline:
        response = httpx.post(
            f"{entrypoint.base_url}/v1/completions", json=body, headers=headers, timeout=30
        )
        if response.status_code != 200:
            return response
        time.sleep(0.1)
    pytest.fail(f"no request refused within {DRAIN_NOTICE_TIMEOUT_S}s of SIGTERM")


def assert_prometheus_scrapes_with_a_key(entrypoint: Entrypoint, key: str, folder: Path) -> None:
    """The shipped one-node scrape config, with its API-key lines uncommented as its comment
    says, scrapes the app's /metrics (if Prometheus is installed; CI installs it)."""
    binary = shutil.which("prometheus")
    if binary is None and not os.environ.get(REQUIRE_ENV):
        return
    assert binary is not None, f"prometheus not on PATH ({REQUIRE_ENV} is set)"
    key_file = folder / "api_key"
    key_file.write_text(key)
    config = _fast(yaml.safe_load(APP_SCRAPE_CONFIG.read_text()))
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{entrypoint.http_port}"]}]
    job["authorization"] = {"credentials_file": str(key_file)}
    assert "#   credentials_file:" in APP_SCRAPE_CONFIG.read_text()
    (folder / "prometheus").mkdir()
    with contextmanager(_run_prometheus)(binary, config, folder / "prometheus") as prometheus:
        prometheus.wait_for('up{job="llm-serving"} == 1')
        prometheus.wait_for('ray_llm_requests_total{route="/v1/chat/completions"}')


@pytest.fixture
def start_entrypoint(tmp_path: Path) -> Iterator[Callable[..., Entrypoint]]:
    """Start the entrypoint with extra environment; kill whatever is left at the end."""
    started: list[Entrypoint] = []
    ray_temp = tempfile.mkdtemp(prefix="ray-ep-")  # short: Ray's socket paths must be short

    def start(**env_overrides: str) -> Entrypoint:
        metrics_port, http_port, ray_port = free_port(), free_port(), free_port()
        config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
        config["applications"][0]["args"]["metrics"]["export_port"] = metrics_port
        config_path = tmp_path / "serve_config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        ray_start_args = (
            f"--temp-dir={ray_temp} --dashboard-agent-listen-port={free_port()} "
            f"--ray-client-server-port={free_port()}"
        )
        env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
        env |= {
            "PORT": str(http_port),
            "RAY_PORT": str(ray_port),
            "RAY_START_ARGS": ray_start_args,
            # The session's app runs HAProxy on this machine too: its fixed ports must differ.
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
            "PYTHONUNBUFFERED": "1",
            **env_overrides,
        }
        log = tmp_path / "entrypoint.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "serve_app.runtime.entrypoint", str(config_path)],
                cwd=REPO,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        entrypoint = Entrypoint(process, log, http_port, metrics_port, ray_port, ray_temp)
        started.append(entrypoint)
        return entrypoint

    yield start
    for entrypoint in started:
        if entrypoint.process.poll() is None:
            leftovers = entrypoint.tree()
            entrypoint.process.kill()
            for process in _alive(leftovers):
                process.kill()
            entrypoint.process.wait()
    shutil.rmtree(ray_temp, ignore_errors=True)


@pytest.mark.timeout(STARTUP_TIMEOUT_S + EXIT_TIMEOUT_S + 120)
def test_entrypoint_serves_the_model_and_drains_on_sigterm(
    start_entrypoint: Callable[..., Entrypoint], tmp_path: Path
) -> None:
    entrypoint = start_entrypoint(API_KEYS="first-key,second-key")
    entrypoint.wait_healthy()
    address_record = Path(entrypoint.ray_temp) / "ray_current_cluster"  # what `ray start` wrote
    assert address_record.read_text() == f"{_node_ip()}:{entrypoint.ray_port}"
    # /health needs no key: load balancers probe it.
    assert httpx.get(f"{entrypoint.base_url}/health", timeout=10).status_code == 200

    keyless = httpx.get(f"{entrypoint.base_url}/v1/models", timeout=30)
    assert keyless.status_code == 401
    assert keyless.json()["error"]["code"] == "invalid_api_key"
    client = openai.OpenAI(
        base_url=f"{entrypoint.base_url}/v1", api_key="second-key", max_retries=0, timeout=120
    )
    reply = client.chat.completions.create(
        model=DEFAULT_MODEL_ID,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=32,
        temperature=0,
    )
    assert "Paris" in reply.choices[0].message.content
    assert_prometheus_scrapes_with_a_key(entrypoint, "second-key", tmp_path)
    # The head exports Ray's metrics on the config's metrics.export_port.
    scrape = httpx.get(f"http://127.0.0.1:{entrypoint.metrics_port}/metrics", timeout=10)
    assert scrape.status_code == 200
    assert "ray_" in scrape.text

    ray_processes = entrypoint.tree()
    assert len(ray_processes) > 3  # the runner, `ray start`, GCS, raylet, workers...
    # A stream in flight when SIGTERM arrives is finished before Serve stops.
    stream = client.completions.create(
        model=DEFAULT_MODEL_ID,
        prompt="Once upon a time",
        max_tokens=DRAINED_STREAM_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = iter(stream)
    next(chunks)
    entrypoint.process.send_signal(signal.SIGTERM)
    # While the stream is in flight, a new request gets an OpenAI 503, never HAProxy's 404.
    refused = _first_refusal(entrypoint, "second-key")
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "shutting_down"
    assert refused.headers["retry-after"] == "1"
    rest = list(chunks)  # before the drain, HAProxy was killed at once: a connection error
    assert rest[-1].usage.completion_tokens == DRAINED_STREAM_TOKENS
    assert [c.choices[0].finish_reason for c in rest if c.choices][-1] == "length"
    assert entrypoint.process.wait(EXIT_TIMEOUT_S) == 0, entrypoint.output()[-5000:]

    leftovers = _wait_gone(ray_processes, RAY_GONE_TIMEOUT_S)
    names = [process.name() for process in leftovers]
    for process in leftovers:
        process.kill()
    assert names == []
    assert _wait_gone_by_name(entrypoint) == []
    assert not _accepts_connections(entrypoint.ray_port)
    assert not address_record.exists()  # a later plain ray.init() must not try the dead head
    assert "Stopping the Serve app" in entrypoint.output()
    assert "Stopping the Ray head" in entrypoint.output()


@pytest.mark.timeout(STARTUP_TIMEOUT_S + 60)
def test_entrypoint_exits_nonzero_with_the_reason_when_the_model_cannot_load(
    start_entrypoint,
) -> None:
    entrypoint = start_entrypoint(MODEL_NAME="/nonexistent/path")
    try:
        code = entrypoint.process.wait(STARTUP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {STARTUP_TIMEOUT_S}s:\n{entrypoint.output()[-5000:]}")
    output = entrypoint.output()
    assert code == 1, output[-5000:]
    assert "failed to deploy" in output, output[-5000:]  # Serve's message, via the runner
    assert "/nonexistent/path" in output
    assert "entrypoint ERROR The application failed to start" in output
    assert _wait_gone_by_name(entrypoint) == []
    assert not _accepts_connections(entrypoint.ray_port)
