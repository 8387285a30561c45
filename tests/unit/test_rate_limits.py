"""Rate limits: the buckets (on a clock of the test's own), what a request reserves, who the
client is, and admission in the serving path on the fake engine."""

import asyncio
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request

from serve_app.api.rate_limits import (
    PRUNE_EVERY_S,
    RateLimitBook,
    client_of,
    duration,
    requested_tokens,
)
from serve_app.core.config import RateLimit, RateLimits
from serve_app.core.errors import OpenAIError
from serve_app.vllm_compat import ChatCompletionRequest, CompletionRequest
from tests.unit.test_serving import body, run, stack


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def book() -> tuple[RateLimitBook, Clock]:
    clock = Clock()
    return RateLimitBook(clock), clock


RPM_3 = RateLimit(requests_per_minute=3)


def test_a_client_gets_its_requests_per_minute_then_a_429_with_the_wait() -> None:
    limits, clock = book()
    remaining = [limits.admit("a", RPM_3, 10).headers for _ in range(3)]
    assert [h["x-ratelimit-remaining-requests"] for h in remaining] == ["2", "1", "0"]
    assert remaining[0]["x-ratelimit-limit-requests"] == "3"
    refused = limits.admit("a", RPM_3, 10)
    assert refused.refused == "requests"
    assert refused.retry_after_s == 20  # one request's refill: 60 s / 3
    assert refused.headers["x-ratelimit-reset-requests"] == "1m0s"
    assert "limit 3" in refused.message and "try again in 20s" in refused.message
    assert limits.admit("b", RPM_3, 10).refused is None  # another client's own allowance
    clock.now += 19.9
    assert limits.admit("a", RPM_3, 10).refused == "requests"
    clock.now += 0.2
    assert limits.admit("a", RPM_3, 10).refused is None


def test_tokens_are_reserved_then_what_was_not_used_is_given_back() -> None:
    limits, clock = book()
    tpm = RateLimit(tokens_per_minute=1000)
    assert limits.admit("a", tpm, 600).headers["x-ratelimit-remaining-tokens"] == "400"
    refused = limits.admit("a", tpm, 600)
    assert refused.refused == "tokens" and refused.retry_after_s == 12  # 200 tokens at 1000/min
    limits.settle("a", tpm, reserved=600, used=100)
    assert limits.admit("a", tpm, 600).headers["x-ratelimit-remaining-tokens"] == "300"
    clock.now += 0.0
    limits.settle("a", tpm, reserved=600, used=900)  # used more than reserved: nothing back
    assert limits.admit("a", tpm, 400).refused == "tokens"


def test_a_request_larger_than_a_minute_passes_on_a_full_bucket_and_leaves_debt() -> None:
    limits, clock = book()
    tpm = RateLimit(tokens_per_minute=100)
    assert limits.admit("a", tpm, 250).refused is None
    assert limits.admit("a", tpm, 1).refused == "tokens"
    clock.now += 60  # 100 back: still 50 in debt
    assert limits.admit("a", tpm, 1).refused == "tokens"
    clock.now += 31
    assert limits.admit("a", tpm, 1).refused is None


def test_a_refusal_takes_nothing_from_either_bucket() -> None:
    limits, _ = book()
    both = RateLimit(requests_per_minute=10, tokens_per_minute=100)
    limits.admit("a", both, 90)
    refused = limits.admit("a", both, 50)
    assert refused.refused == "tokens"
    assert refused.headers["x-ratelimit-remaining-requests"] == "9"
    assert limits.admit("a", both, 10).headers["x-ratelimit-remaining-requests"] == "8"


def test_clients_whose_buckets_refilled_are_forgotten() -> None:
    limits, clock = book()
    for client in range(100):
        limits.admit(str(client), RPM_3, 1)
    assert len(limits) == 100
    clock.now += PRUNE_EVERY_S
    limits.admit("fresh", RPM_3, 1)
    assert len(limits) == 1


def test_a_lowered_limit_applies_to_a_known_client_at_once() -> None:
    limits, _ = book()
    limits.admit("a", RateLimit(requests_per_minute=100), 1)
    assert limits.admit("a", RPM_3, 1).headers["x-ratelimit-remaining-requests"] == "2"


def test_per_key_overrides_replace_the_fields_they_set() -> None:
    limits = RateLimits.model_validate(
        {
            "requests_per_minute": 10,
            "tokens_per_minute": 1000,
            "per_key": {"batch": {"tokens_per_minute": 50}, "admin": {"requests_per_minute": None}},
        }
    )
    assert limits.for_client("batch") == RateLimit(requests_per_minute=10, tokens_per_minute=50)
    assert limits.for_client("admin") == RateLimit(tokens_per_minute=1000)
    assert limits.for_client(None) == limits.for_client("other")
    assert not RateLimits().enabled
    assert RateLimits.model_validate({"per_key": {"x": {"requests_per_minute": 1}}}).enabled


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0201, "21ms"), (1.5, "1.5s"), (20, "20s"), (60, "1m0s"), (361.25, "6m1.25s")],
)
def test_durations_are_written_as_openai_writes_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_a_request_reserves_its_prompt_estimate_plus_max_tokens_per_completion() -> None:
    chat = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 5, "n": 2}
    )
    assert requested_tokens(chat, ["x" * 40], max_model_len=100) == 10 + 5 * 2
    unset = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x" * 40}]}
    )
    assert requested_tokens(unset, ["x" * 40], max_model_len=100) == 100  # 10 + the 90 left
    prompts = CompletionRequest.model_validate(
        {"model": "m", "prompt": ["ab", "cd"], "max_tokens": 3}
    )
    assert requested_tokens(prompts, ["ab", "cd"], max_model_len=100) == 1 + 3 * 2
    ids = CompletionRequest.model_validate({"model": "m", "prompt": [1, 2, 3], "max_tokens": 3})
    assert requested_tokens(ids, [], max_model_len=100) == 3 + 3


def request(headers: dict[str, str] | None = None, key_name: str | None = None) -> Request:
    scope: dict[str, Any] = {
        "type": "http",
        "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("10.0.0.9", 5555),
    }
    if key_name is not None:
        scope["state"] = {"api_key_name": key_name}
    return Request(scope)


def test_the_client_is_its_key_name_else_the_last_forwarded_hop_else_the_peer() -> None:
    assert client_of(request(key_name="alice")) == ("alice", "alice")
    forwarded = request({"x-forwarded-for": "1.1.1.1, 2.2.2.2"})
    assert client_of(forwarded) == ("2.2.2.2", None)  # the hop the nearest proxy added
    assert client_of(request()) == ("10.0.0.9", None)


def chat(name: str, **fields: Any) -> ChatCompletionRequest:
    messages = [{"role": "user", "content": "w10 w11"}]
    return ChatCompletionRequest.model_validate({"model": name, "messages": messages} | fields)


def test_over_its_limit_a_request_gets_a_429_and_never_reaches_the_engine(model: Path) -> None:
    async def scenario() -> tuple[Any, Any, int]:
        s = await stack(model, rate_limits=RateLimits(requests_per_minute=1))
        first = await s.api.chat(chat(s.name, max_tokens=2), request())
        with pytest.raises(OpenAIError) as refused:
            await s.api.chat(chat(s.name, max_tokens=2, stream=True), request())
        return first, refused.value, len(s.fake.requests)

    first, refused, engine_requests = run(scenario())
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    assert (refused.status_code, refused.type, refused.code) == (
        429,
        "requests",
        "rate_limit_exceeded",
    )
    headers = refused.headers()
    assert headers["Retry-After"] == "60" and headers["x-ratelimit-limit-requests"] == "1"
    assert engine_requests == 1


def test_a_finished_request_gives_back_the_tokens_it_did_not_use(model: Path) -> None:
    async def scenario() -> tuple[int, int, int]:
        s = await stack(model, rate_limits=RateLimits(tokens_per_minute=1000), script=["w12"] * 3)
        first = await s.api.chat(chat(s.name, max_tokens=100), request())
        used = (await body(first))["usage"]["total_tokens"]
        await asyncio.sleep(0.05)  # the settlement is sent without waiting
        second = await s.api.chat(chat(s.name, max_tokens=100, stream=True), request())
        await body(second)
        remaining = (first.headers, second.headers)
        return (*(int(h["x-ratelimit-remaining-tokens"]) for h in remaining), used)

    first, second, used = run(scenario())
    reserved = 2 + 100  # "w10 w11": 7 characters, 2 tokens estimated; max_tokens 100
    assert first == 1000 - reserved
    # The first request's unused tokens came back before the second took its reservation
    # (without the settlement: 1000 - 2 * reserved); a second's refill is under 17 tokens.
    assert 0 <= second - (1000 - used - reserved) < 17


def test_a_responses_request_reserves_its_input_and_max_output_tokens() -> None:
    from serve_app.vllm_compat import ResponsesRequest

    request = ResponsesRequest.model_validate(
        {"model": "m", "input": "x" * 40, "max_output_tokens": 8}
    )
    assert requested_tokens(request, ["x" * 40], max_model_len=100) == 10 + 8
