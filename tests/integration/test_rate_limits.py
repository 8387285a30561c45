"""Rate limits on the real stack: set live (the ingress's user_config, no restart), held
across both ingress replicas, answered with OpenAI's 429 and headers.

The session runs without API keys, so the client is its address; each test names its own
with `X-Forwarded-For` (the hop a proxy in front would add), so they never share a bucket.
"""

import csv
import io
import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from ray.serve.schema import ServeDeploySchema

from tests.integration.conftest import redeploy_ingress

REQUESTS_PER_MINUTE = 4
TOKENS_PER_MINUTE = 1000
BIG_REQUEST_TOKENS = 900
APPLY_TIMEOUT_S = 60


def chat(model: str, max_tokens: int = 1, **fields: object) -> dict:
    messages = [{"role": "user", "content": "Hi"}]
    return {"model": model, "messages": messages, "max_tokens": max_tokens} | fields


def post(base_url: str, body: dict, client: str) -> httpx.Response:
    """On a connection of its own, so HAProxy may hand it to either ingress replica."""
    headers = {"X-Forwarded-For": client}
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, headers=headers, timeout=120)


def limited_everywhere(base_url: str, model: str, limited: bool) -> bool:
    """Whether new clients' requests, 6 at once, all carry (or all lack) the headers."""
    with ThreadPoolExecutor(6) as pool:
        probes = pool.map(lambda _: post(base_url, chat(model), f"probe-{uuid.uuid4()}"), range(6))
        return all(("x-ratelimit-limit-requests" in p.headers) == limited for p in probes)


def wait_for(base_url: str, model: str, limited: bool) -> None:
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    while not limited_everywhere(base_url, model, limited):
        assert time.monotonic() < deadline, f"rate limits {limited=} not applied in time"
        time.sleep(1)


@pytest.fixture(scope="module")
def rate_limited(deploy_config: ServeDeploySchema, base_url: str, model: str) -> Iterator[None]:
    limits = {"requests_per_minute": REQUESTS_PER_MINUTE, "tokens_per_minute": TOKENS_PER_MINUTE}
    redeploy_ingress(deploy_config, user_config=limits)
    wait_for(base_url, model, limited=True)
    yield
    redeploy_ingress(deploy_config)  # the shipped config: the builder's user_config, no limits
    wait_for(base_url, model, limited=False)


def haproxy_sessions() -> dict[tuple[str, str], int]:
    """Sessions HAProxy handed to each server so far (its stats page's `stot`)."""
    port = os.environ["RAY_SERVE_HAPROXY_STATS_PORT"]
    text = httpx.get(f"http://127.0.0.1:{port}/stats;csv").text.removeprefix("# ")
    rows = csv.DictReader(io.StringIO(text))
    return {
        (row["pxname"], row["svname"]): int(row["stot"] or 0)
        for row in rows
        if row["svname"] not in ("FRONTEND", "BACKEND")
    }


def test_the_limit_holds_across_ingress_replicas(
    rate_limited: None, base_url: str, model: str
) -> None:
    before = haproxy_sessions()
    with ThreadPoolExecutor(2 * REQUESTS_PER_MINUTE) as pool:
        responses = list(
            pool.map(
                lambda _: post(base_url, chat(model), "client-a"), range(2 * REQUESTS_PER_MINUTE)
            )
        )
    after = haproxy_sessions()
    servers = [server for server, count in after.items() if count > before.get(server, 0)]
    assert len(servers) >= 2, f"the requests reached one ingress replica only: {after}"
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * REQUESTS_PER_MINUTE + [429] * REQUESTS_PER_MINUTE
    for response in responses:
        assert response.headers["x-ratelimit-limit-requests"] == str(REQUESTS_PER_MINUTE)
        assert response.headers["x-ratelimit-limit-tokens"] == str(TOKENS_PER_MINUTE)
        if response.status_code == 429:
            assert response.json() == {
                "error": {
                    "message": response.json()["error"]["message"],
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
            }
            assert 1 <= int(response.headers["retry-after"]) <= 60 / REQUESTS_PER_MINUTE
            assert response.headers["x-ratelimit-remaining-requests"] == "0"


def test_the_openai_client_sees_a_rate_limit_error_on_a_stream_too(
    rate_limited: None, base_url: str, model: str
) -> None:
    client = openai.OpenAI(
        base_url=f"{base_url}/v1",
        api_key="unused",
        max_retries=0,
        default_headers={"X-Forwarded-For": "client-b"},
    )
    for _ in range(REQUESTS_PER_MINUTE):
        client.chat.completions.create(**chat(model))
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(**chat(model, stream=True))
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.response.headers["retry-after"]


def test_tokens_are_reserved_while_a_request_runs(
    rate_limited: None, base_url: str, model: str
) -> None:
    # Each asks for 900 of the minute's 1000 tokens. The bucket refills 1000 a minute: the
    # second is refused unless the first's first chunk takes 48 s (with 600 each, 12 s would
    # have let it in; it was admitted in two runs on the 2-core machine).
    big = chat(model, max_tokens=BIG_REQUEST_TOKENS, stream=True, ignore_eos=True)
    headers = {"X-Forwarded-For": "client-c"}
    with httpx.stream(
        "POST", f"{base_url}/v1/chat/completions", json=big, headers=headers, timeout=120
    ) as running:
        assert running.status_code == 200
        next(running.iter_lines())  # the first request runs and holds its 900+ tokens
        refused = post(base_url, chat(model, max_tokens=BIG_REQUEST_TOKENS), "client-c")
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "tokens"
    assert int(refused.headers["x-ratelimit-remaining-tokens"]) < BIG_REQUEST_TOKENS
