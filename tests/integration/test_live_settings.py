"""The LLMServer's live settings (its Serve `user_config`): pacing changes on a running app.

A config that sets `user_config` on the LLMServer deployment is a lightweight Serve update:
Serve calls `LLMServer.reconfigure` on the running replica, and new chunks follow the new
budget. Here the budget drops to 1 chunk/s, so a stream's tokens merge into a few chunks
(and `ray_llm_stream_tokens_per_chunk{stage="sent"}` says so), then the shipped config comes
back and every token is its own chunk again.
"""

import json
import re
import time
from collections.abc import Iterator

import httpx
import pytest
from ray.serve.schema import ServeDeploySchema

from tests.integration.conftest import redeploy_llm_server

TOKENS = 200
APPLY_TIMEOUT_S = 90
EXPORT_WAIT_S = 60


def _chunks(http: httpx.Client, model: str) -> tuple[int, int]:
    """(SSE events with text, completion tokens) of one streamed completion."""
    body = {
        "model": model, "prompt": "Once upon a time", "max_tokens": TOKENS, "ignore_eos": True,
        "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    events, tokens = 0, 0
    with http.stream("POST", "/v1/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            data = json.loads(line.removeprefix("data: "))
            if data["choices"]:
                events += 1
            if data.get("usage"):
                tokens = data["usage"]["completion_tokens"]
    return events, tokens


def _until(http: httpx.Client, model: str, merged: bool) -> tuple[int, int]:
    """Stream until the chunks are merged (or not): the update reached the replica. Fails
    after APPLY_TIMEOUT_S: a restore that did not apply would fail every later module."""
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    while True:
        events, tokens = _chunks(http, model)
        if (events < tokens / 2) == merged:
            return events, tokens
        assert time.monotonic() < deadline, (
            f"after {APPLY_TIMEOUT_S}s, {events} chunks for {tokens} tokens (merged: {not merged})"
        )


def _streams_sent_merged_beyond(http: httpx.Client, tokens: float) -> float:
    """Finished streams whose sent chunks carried more than `tokens` tokens on average, as
    exported now (all replicas summed)."""
    buckets: dict[str, float] = {}
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("ray_llm_stream_tokens_per_chunk_bucket{") and 'stage="sent"' in line:
            le = re.search(r'le="([^"]+)"', line).group(1)
            buckets[le] = buckets.get(le, 0.0) + float(line.rsplit(" ", 1)[1])
    if not buckets:
        return 0.0  # not exported yet
    return buckets["+Inf"] - buckets[str(tokens)]  # a bound missing from the export: KeyError


@pytest.fixture
def slow_pacing(deploy_config: ServeDeploySchema, http: httpx.Client, model: str) -> Iterator[None]:
    redeploy_llm_server(deploy_config, user_config={"max_chunks_per_second": 1})
    yield
    redeploy_llm_server(deploy_config)  # the shipped config again: the builder's user_config
    _until(http, model, merged=False)


def test_pacing_changes_live(slow_pacing: None, http: httpx.Client, model: str) -> None:
    events, tokens = _until(http, model, merged=True)
    assert tokens == TOKENS
    assert events < TOKENS / 2, f"{events} chunks for {tokens} tokens at 1 chunk/s"
    deadline = time.monotonic() + EXPORT_WAIT_S
    while not _streams_sent_merged_beyond(http, 4.0) and time.monotonic() < deadline:
        time.sleep(2)
    assert _streams_sent_merged_beyond(http, 4.0) >= 1


def test_the_shipped_budget_sends_a_lone_stream_token_by_token(
    http: httpx.Client, model: str
) -> None:
    events, tokens = _chunks(http, model)
    assert tokens == TOKENS
    assert events >= TOKENS * 0.9  # one chunk per engine step, a token each
