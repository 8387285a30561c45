"""Waiting for GET /health: the one helper the entrypoint, the benchmarks and the tests share."""

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

HEALTH_REQUEST_TIMEOUT_S = 5.0
POLL_S = 1.0


def health_status(url: str) -> str:
    """The status code GET `url` answered ('200' when healthy), or the connection error."""
    try:
        with urllib.request.urlopen(url, timeout=HEALTH_REQUEST_TIMEOUT_S) as response:
            return str(response.status)
    except urllib.error.HTTPError as exc:
        return str(exc.code)
    except (urllib.error.URLError, OSError) as exc:
        return f"no answer ({exc})"


def wait_healthy(
    url: str,
    timeout_s: float,
    *,
    status: int = 200,
    ready: Callable[[], bool] = lambda: True,
    check: Callable[[], None] = lambda: None,
    stop: threading.Event | None = None,
    on_wait: Callable[[float, str], None] | None = None,
) -> float | None:
    """Seconds until GET `url` answered `status`; None when `stop` was set first.

    `url` is asked only once `ready()` is true (e.g. the app said it runs: before that, another
    server may answer on the port); `check` runs before every poll and raises to give up
    (e.g. the server's process exited); `on_wait(elapsed_s, last_status)` is called after
    every unsuccessful poll. Raises `TimeoutError` naming the last status once `timeout_s`
    has passed.
    """
    started = time.monotonic()
    while True:
        check()
        last = health_status(url) if ready() else "not ready"
        elapsed = time.monotonic() - started
        if last == str(status):
            return elapsed
        if elapsed > timeout_s:
            raise TimeoutError(
                f"GET {url} did not answer {status} within {timeout_s:.0f}s (last: {last})"
            )
        if on_wait is not None:
            on_wait(elapsed, last)
        if stop is None:
            time.sleep(POLL_S)
        elif stop.wait(POLL_S):
            return None
