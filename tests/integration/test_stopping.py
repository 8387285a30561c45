"""How `python -m serve_app serve` stops, every way it is stopped: Ctrl-C (SIGINT to its
process group), SIGTERM to it, SIGTERM to its whole process group at once (`kill -- -PGID`, as
some supervisors and scripts stop a service), a second SIGTERM during the drain. Nothing it
started is left behind, and the port is free for the next start.

The runner starts in a session of its own with a Ray of its own (free ports), beside the
session's deployment.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from serve_app.runtime.leftovers import is_serve_haproxy
from tests.integration.figures import Figures
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 600
EXIT_TIMEOUT_S = 150
GONE_TIMEOUT_S = 30


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, int]]:
    port = free_port()
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["applications"][0]["args"]["metrics"]["export_port"] = free_port()
    config_path = tmp_path / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env |= {
        "PORT": str(port),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "serve_app", "serve", str(config_path)],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a supervisor starts it
        )
    yield process, log, port
    if process.poll() is None:
        for child in psutil.Process(process.pid).children(recursive=True):
            child.kill()
        process.kill()
        process.wait()


def ctrl_c(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGINT)  # what a terminal sends its foreground group


def sigterm(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)


def sigterm_to_the_group(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)


def sigterm_twice(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    time.sleep(1)  # during the drain: stop without waiting
    process.send_signal(signal.SIGTERM)


@pytest.mark.parametrize("stop", [ctrl_c, sigterm, sigterm_to_the_group, sigterm_twice])
def test_every_way_of_stopping_leaves_no_process_and_frees_the_port(
    runner: tuple[subprocess.Popen[bytes], Path, int],
    stop: Callable[[subprocess.Popen[bytes]], None],
    figures: Figures,
) -> None:
    process, log, port = runner
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while "Serving on http://" not in log.read_text(errors="replace"):
        assert process.poll() is None, log.read_text(errors="replace")[-5000:]
        assert time.monotonic() < deadline, "not serving in time"
        time.sleep(1)
    started = psutil.Process(process.pid).children(recursive=True)  # Ray, replicas, engine
    assert any(is_serve_haproxy(p) for p in started), "no Serve HAProxy under the runner"
    signalled = time.monotonic()
    stop(process)
    code = process.wait(timeout=EXIT_TIMEOUT_S)
    exited = time.monotonic() - signalled
    _, alive = psutil.wait_procs(started, timeout=GONE_TIMEOUT_S)
    left = [f"{p.pid} {p.name()}" for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    figures.record(stop.__name__, exit_code=code, exited_after_s=round(exited, 1), left=left)
    assert not left, f"left running: {left}\n{log.read_text()[-3000:]}"
    assert port_free(port)
