"""The HTTP front the app is served behind: HAProxy, as `python -m serve_app serve` sets up."""

import concurrent.futures
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


def test_every_answer_carries_a_request_id(http: httpx.Client, model: str) -> None:
    body = {"model": model, "prompt": "Hi", "max_tokens": 1}
    generated = http.post("/v1/completions", json=body)
    refused = http.post("/v1/completions", json=body | {"max_tokens": -1})
    assert (generated.status_code, refused.status_code) == (200, 400)
    ids = [generated.headers.get("x-request-id"), refused.headers.get("x-request-id")]
    assert all(ids) and ids[0] != ids[1], ids
    # The completion's id is the request's: a log line of either finds the other.
    assert ids[0] in generated.json()["id"]


def test_a_clients_request_id_is_kept_even_when_two_requests_share_it(
    http: httpx.Client, model: str
) -> None:
    body = {"model": model, "prompt": "Hi", "max_tokens": 2}
    headers = {"x-request-id": "client-trace-42"}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(lambda _: http.post("/v1/completions", json=body, headers=headers), range(2))
        )
    assert [answer.status_code for answer in answers] == [200, 200]
    assert {answer.headers["x-request-id"] for answer in answers} == {"client-trace-42"}
