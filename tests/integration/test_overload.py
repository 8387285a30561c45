"""Overload: requests beyond the LLM replicas' slots and queue are refused at once with an
OpenAI 503, and the admitted ones still complete.

The shipped limits (256 ongoing per LLM replica, 1 024 queued per ingress replica) are far
beyond what a test can fill on CPU, so the fixture lowers them on the running app, a
lightweight Serve update (the replica is reconfigured, not restarted), and restores them.
"""

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest
from ray.serve.schema import ServeDeploySchema

from tests.integration.conftest import redeploy_llm_server

CONCURRENT = 8
TOKENS = 48
APPLY_TIMEOUT_S = 120


async def _burst(base_url: str, model: str) -> list[tuple[float, httpx.Response]]:
    """CONCURRENT completions at once, every other one streamed; (seconds until answered,
    response) for each."""

    async def one(client: httpx.AsyncClient, stream: bool) -> tuple[float, httpx.Response]:
        body = {
            "model": model, "prompt": "Once upon a time", "max_tokens": TOKENS,
            "ignore_eos": True, "stream": stream, "stream_options": {"include_usage": True},
        }  # fmt: skip
        if not stream:
            del body["stream_options"]
        started = time.monotonic()
        response = await client.post("/v1/completions", json=body)
        return time.monotonic() - started, response

    async with httpx.AsyncClient(base_url=base_url, timeout=300) as client:
        return await asyncio.gather(*(one(client, i % 2 == 1) for i in range(CONCURRENT)))


def _completion_tokens(response: httpx.Response) -> int:
    """Usage of a completion, streamed (its usage event, before `[DONE]`) or not."""
    if not response.headers["content-type"].startswith("text/event-stream"):
        return response.json()["usage"]["completion_tokens"]
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
    assert events[-1] == "[DONE]"
    return json.loads(events[-2])["usage"]["completion_tokens"]


def _until(base_url: str, model: str, refusing: bool) -> list[tuple[float, httpx.Response]]:
    """Bursts until one is (or is not) refused: the ingress replicas' routers have the limits.
    Fails after APPLY_TIMEOUT_S: a restore that did not apply would fail every later module."""
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    while True:
        answers = asyncio.run(_burst(base_url, model))
        refused = any(r.status_code == 503 for _, r in answers)
        if refused == refusing:
            return answers
        statuses = [r.status_code for _, r in answers]
        assert time.monotonic() < deadline, f"after {APPLY_TIMEOUT_S}s, still {statuses}"


@pytest.fixture
def one_slot_one_queued(
    deploy_config: ServeDeploySchema, base_url: str, model: str
) -> Iterator[None]:
    redeploy_llm_server(deploy_config, max_ongoing_requests=1, max_queued_requests=1)
    yield
    redeploy_llm_server(deploy_config)
    _until(base_url, model, refusing=False)


def test_requests_beyond_the_queue_get_503_at_once_and_the_rest_complete(
    one_slot_one_queued: None, base_url: str, model: str
) -> None:
    answers = _until(base_url, model, refusing=True)
    refused = [(s, r) for s, r in answers if r.status_code == 503]
    served = [(s, r) for s, r in answers if r.status_code == 200]
    # One slot and one queued per ingress replica admit at most 3 of 8: more than half are
    # refused, so streamed requests (every other one) are among them.
    assert len(refused) > CONCURRENT // 2, [r.status_code for _, r in answers]
    assert len(served) + len(refused) == CONCURRENT, [r.status_code for _, r in answers]
    assert served, "the admitted requests must still be answered"
    for _, response in served:
        assert _completion_tokens(response) == TOKENS
    for _, response in refused:
        error = response.json()["error"]  # streamed or not: a plain HTTP 503, no event stream
        assert error["type"] == "service_unavailable_error"
        assert "capacity" in error["message"]
    # Refused while the admitted ones were still generating, not after waiting for a slot.
    assert max(s for s, _ in refused) < min(s for s, _ in served)
