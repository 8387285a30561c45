"""Waiting for GET /health: the shared helper of the entrypoint, the benchmarks and the tests."""

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serve_app.runtime import readiness
from serve_app.runtime.readiness import wait_healthy


class Health:
    """A /health endpoint answering `status`, counting the requests it got."""

    def __init__(self) -> None:
        self.status = 503
        self.requests = 0


@pytest.fixture
def health(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Health, str]]:
    monkeypatch.setattr(readiness, "POLL_S", 0.01)
    state = Health()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests += 1
            self.send_response(state.status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state, f"http://127.0.0.1:{server.server_port}/health"
    server.shutdown()


def test_it_returns_once_the_endpoint_answers_the_status(health: tuple[Health, str]) -> None:
    state, url = health
    seen: list[str] = []

    def on_wait(_elapsed: float, status: str) -> None:
        seen.append(status)
        if len(seen) == 3:
            state.status = 200

    assert wait_healthy(url, 30, on_wait=on_wait) is not None
    assert seen == ["503", "503", "503"]


def test_it_waits_for_another_status_when_asked(health: tuple[Health, str]) -> None:
    _, url = health
    assert wait_healthy(url, 30, status=503) is not None


def test_it_asks_nothing_before_the_server_is_ready(health: tuple[Health, str]) -> None:
    state, url = health
    state.status = 200
    polls = {"n": 0}

    def ready() -> bool:
        polls["n"] += 1
        return polls["n"] > 3

    assert wait_healthy(url, 30, ready=ready) is not None
    assert state.requests == 1


def test_it_gives_up_with_the_last_status(health: tuple[Health, str]) -> None:
    _, url = health
    with pytest.raises(TimeoutError, match=r"did not answer 200 .* \(last: 503\)"):
        wait_healthy(url, 0.05)


def test_a_failed_check_or_a_stop_ends_the_wait(health: tuple[Health, str]) -> None:
    _, url = health

    def dead() -> None:
        raise RuntimeError("the server exited")

    with pytest.raises(RuntimeError, match="exited"):
        wait_healthy(url, 30, check=dead)
    stop = threading.Event()
    stop.set()
    assert wait_healthy(url, 30, stop=stop) is None


def test_no_server_is_a_status_too() -> None:
    assert readiness.health_status("http://127.0.0.1:9/health").startswith("no answer")
