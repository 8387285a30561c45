"""The HTTP front the app is served behind: HAProxy, as `python -m serve_app serve` sets up."""

import os

import httpx


def test_haproxy_forwards_the_requests(http: httpx.Client) -> None:
    assert http.get("/health").status_code == 200
    # HAProxy's own Prometheus frontend counts what it forwarded to the app's backend.
    port = os.environ["RAY_SERVE_HAPROXY_METRICS_PORT"]  # set by the session fixture
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    forwarded = [
        line
        for line in metrics.splitlines()
        if line.startswith("haproxy_backend_http_responses_total") and 'code="2xx"' in line
    ]
    assert forwarded, "HAProxy exported no backend response counts"
    assert max(float(line.rsplit(" ", 1)[1]) for line in forwarded) >= 1
