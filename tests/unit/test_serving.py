"""The serving path on a fake engine: vLLM's serving classes in `OpenAIAPI`, over the real
`LLMServerClient`, calling the real `LLMServer`, whose engine is `tests/fake_engine.py`
(real `RequestOutput`s, no weights).

Covers what only minute-long integration runs covered before: choices indexed across
prompts, an error after the first SSE event, pacing inside `generate`, cancellation, usage
and `vllm_stats`.
"""

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi import Request
from fastapi.responses import JSONResponse

from deployments.rate_limiter import RateLimiter
from serve_app.api.llm_client import LLMServerClient
from serve_app.api.openai_api import OpenAIAPI
from serve_app.api.rate_limits import RateLimitClient
from serve_app.core.config import AppConfig, MetricsConfig, RateLimits
from serve_app.core.errors import OpenAIError
from serve_app.observability.metrics import IngressMetrics
from serve_app.vllm_compat import (
    ChatCompletionRequest,
    CompletionRequest,
    EngineRequest,
    OpenAISettings,
    SamplingParams,
    engine_request,
)
from tests.fake_engine import (
    FakeEngine,
    InProcessHandle,
    start_llm_server,
    token_id,
    word,
)

PROMPTS = [[11, 12, 13], [17, 18]]


pytestmark = pytest.mark.usefixtures("cpu_kv_cache_env")


def app_config(model: Path, **overrides: Any) -> AppConfig:
    return AppConfig.model_validate({"model": str(model), "warmup": False} | overrides)


class Stack:
    """The ingress's `OpenAIAPI` over an LLMServer on a FakeEngine, all in this process."""

    def __init__(self, server: Any, fake: FakeEngine, api: OpenAIAPI, handle: Any) -> None:
        self.server, self.fake, self.api, self.handle = server, fake, api, handle
        self.name = str(api._settings.served_name)


async def stack(
    model: Path,
    reasoning_parser: str | None = None,
    config: AppConfig | None = None,
    exits: list[bool] | None = None,
    rate_limits: RateLimits | None = None,
    **engine: Any,
) -> Stack:
    config = config or app_config(model)
    server, fake = await start_llm_server(config, exits, **engine)
    handle = InProcessHandle(server)
    client = LLMServerClient(handle, "grpc")  # type: ignore[arg-type]
    settings = OpenAISettings(
        served_name=config.served_name, model_path=str(model), reasoning_parser=reasoning_parser
    )
    metrics = IngressMetrics(config.served_name, MetricsConfig())
    limiter = RateLimitClient(
        InProcessHandle(RateLimiter.func_or_class()),  # type: ignore[arg-type]
        rate_limits or RateLimits(),
    )
    return Stack(
        server,
        fake,
        OpenAIAPI(client, settings, str(model), metrics, limiter, "x-session-id"),
        handle,
    )


def http_request(headers: dict[str, str] | None = None) -> Request:
    """The HTTP request a body came in (only its headers are read)."""
    pairs = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "headers": pairs, "client": ("10.0.0.9", 5555)})


async def body(response: Any) -> Any:
    """A JSON response's body, or an SSE response's events (parsed; `[DONE]` as the string)."""
    if isinstance(response, JSONResponse):
        return json.loads(response.body)
    events = []
    async for event in response.body_iterator:
        payload = event.removeprefix("data: ").strip()
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def expected_text(prompt: list[int], choice: int, tokens: int) -> str:
    return " ".join(word(token_id(prompt, choice, step)) for step in range(tokens))


def completion(name: str, **fields: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": name} | fields)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_choices_of_several_prompts_are_indexed_prompt_by_prompt(model: Path) -> None:
    fields = {"prompt": PROMPTS, "n": 2, "max_tokens": 3, "temperature": 0.8}

    async def scenario() -> tuple[Any, Any]:
        s = await stack(model)
        whole = await body(await s.api.completion(completion(s.name, **fields), http_request()))
        streamed = await s.api.completion(completion(s.name, **fields, stream=True), http_request())
        return whole, await body(streamed)

    whole, streamed = run(scenario())
    expected = {
        prompt_index * 2 + choice: expected_text(prompt, choice, 3)
        for prompt_index, prompt in enumerate(PROMPTS)
        for choice in range(2)
    }
    assert {c["index"]: c["text"] for c in whole["choices"]} == expected
    texts: dict[int, str] = {}
    for event in streamed[:-1]:
        for choice in event["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    assert texts == expected
    assert streamed[-1] == "[DONE]"


def test_an_error_after_the_first_event_ends_the_stream_with_our_error_then_done(
    model: Path,
) -> None:
    async def scenario() -> list[Any]:
        s = await stack(model, fail_at_step=2)
        request = completion(s.name, prompt=[15, 16], max_tokens=8, stream=True)
        return await body(await s.api.completion(request, http_request()))

    streamed = run(scenario())
    text = "".join(c["text"] for event in streamed[:-2] for c in event["choices"])
    assert text == expected_text([15, 16], 0, 2)
    error = streamed[-2]["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", None)
    assert "fake refusal at step 2" in error["message"]
    assert streamed[-1] == "[DONE]"


def test_an_error_before_the_first_event_is_a_plain_http_error(model: Path) -> None:
    async def scenario() -> None:
        s = await stack(model, fail_at_step=0)
        await s.api.completion(
            completion(s.name, prompt=[15], max_tokens=8, stream=True), http_request()
        )

    with pytest.raises(OpenAIError) as raised:
        run(scenario())
    assert (raised.value.status_code, raised.value.type) == (400, "invalid_request_error")
    assert "fake refusal at step 0" in raised.value.message


def test_over_its_chunk_budget_the_server_merges_tokens_and_loses_none(model: Path) -> None:
    tokens = 400

    async def scenario(chunks_per_second: float | None, step_s: float) -> list[Any]:
        server, _ = await start_llm_server(
            app_config(model, max_chunks_per_second=chunks_per_second), step_s=step_s
        )
        params = SamplingParams(max_tokens=tokens)
        request = EngineRequest({"prompt_token_ids": [13, 14]}, params, "paced")
        return [output async for output in server.generate(request)]

    # ~200 engine outputs a second against a budget of 20 chunks: after the pacer's first
    # half-second window, ~10 tokens a chunk.
    paced, unpaced = run(scenario(20.0, 0.005)), run(scenario(None, 0.0))
    for outputs in (paced, unpaced):
        choices = [choice for output in outputs for choice in output.outputs]
        assert "".join(c.text for c in choices) == " ".join(
            word(token_id([13, 14], 0, step)) for step in range(tokens)
        )
        assert sum(len(c.token_ids) for c in choices) == tokens
        assert len(outputs[0].outputs[0].token_ids) == 1  # the first token never waits
        assert outputs[-1].finished and outputs[-1].outputs[0].finish_reason == "length"
    assert len(unpaced) == tokens
    assert len(paced) < tokens * 0.6


def test_a_non_streamed_request_travels_as_its_first_output_then_the_rest(model: Path) -> None:
    async def scenario() -> tuple[Any, int]:
        s = await stack(model)
        response = await s.api.completion(
            completion(s.name, prompt=[15], max_tokens=20), http_request()
        )
        return await body(response), s.handle.sent

    whole, sent = run(scenario())
    assert whole["choices"][0]["text"] == expected_text([15], 0, 20)
    assert sent == 2


def test_a_consumer_that_leaves_aborts_the_request_in_the_engine(model: Path) -> None:
    async def scenario() -> tuple[FakeEngine, int]:
        s = await stack(model, step_s=0.01)
        request = completion(s.name, prompt=[11], max_tokens=200, stream=True)
        events = (await s.api.completion(request, http_request())).body_iterator
        received = [await anext(events) for _ in range(3)]
        await events.aclose()
        await asyncio.sleep(0.1)  # the cancelled engine request unwinds
        return s.fake, len(received)

    fake, received = run(scenario())
    assert received == 3
    assert len(fake.requests) == 1
    assert fake.aborted == fake.requests


def test_usage_counts_every_prompt_and_every_choice_streamed_or_not(model: Path) -> None:
    fields = {"prompt": PROMPTS, "n": 2, "max_tokens": 5, "temperature": 0.8}

    async def scenario() -> tuple[Any, Any]:
        s = await stack(model)
        whole = await body(await s.api.completion(completion(s.name, **fields), http_request()))
        request = completion(s.name, **fields, stream=True, stream_options={"include_usage": True})
        return whole, await body(await s.api.completion(request, http_request()))

    whole, streamed = run(scenario())
    prompt_tokens = sum(map(len, PROMPTS))
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert [whole["usage"][key] for key in counts] == [prompt_tokens, 20, prompt_tokens + 20]
    stats = whole["vllm_stats"]
    assert stats["time_to_first_token_seconds"] is not None
    assert stats["tokens_per_second"] > 0
    usage_event = streamed[-2]
    assert usage_event["choices"] == []
    assert [usage_event["usage"][key] for key in counts] == [whole["usage"][k] for k in counts]


def test_a_streamed_chat_opens_each_choice_with_the_assistant_role_once(model: Path) -> None:
    async def scenario() -> list[Any]:
        s = await stack(model)
        request = ChatCompletionRequest.model_validate(
            {
                "model": s.name,
                "messages": [{"role": "user", "content": "w10 w11"}],
                "n": 2,
                "max_tokens": 4,
                "temperature": 0.8,
                "stream": True,
            }
        )
        return await body(await s.api.chat(request, http_request()))

    streamed = run(scenario())
    roles: dict[int, list[str]] = {0: [], 1: []}
    for event in streamed[:-1]:
        for choice in event["choices"]:
            if choice["delta"].get("role"):
                roles[choice["index"]].append(choice["delta"]["role"])
    assert roles == {0: ["assistant"], 1: ["assistant"]}


# Sampling fields of the OpenAI request with a value other than vLLM's default, each of which
# only changes what the engine samples (nothing in the response says it was applied).
SAMPLING_FIELDS = {
    "presence_penalty": 0.5,
    "frequency_penalty": -0.25,
    "min_p": 0.1,
    "repetition_penalty": 1.3,
    "min_tokens": 3,
}


@pytest.mark.parametrize("route", ["chat", "completion"])
def test_every_sampling_field_reaches_the_engine_with_its_value(model: Path, route: str) -> None:
    async def scenario() -> list[SamplingParams]:
        s = await stack(model)
        if route == "chat":
            messages = [{"role": "user", "content": "w10"}]
            fields = {"model": s.name, "messages": messages, "max_tokens": 4} | SAMPLING_FIELDS
            await s.api.chat(ChatCompletionRequest.model_validate(fields), http_request())
        else:
            await s.api.completion(
                completion(s.name, prompt=[11], max_tokens=4, **SAMPLING_FIELDS), http_request()
            )
        return s.fake.params

    (params,) = run(scenario())
    assert {name: getattr(params, name) for name in SAMPLING_FIELDS} == SAMPLING_FIELDS


def test_the_engine_request_asks_for_deltas_and_says_when_to_collect() -> None:
    from vllm.sampling_params import RequestOutputKind

    final = SamplingParams(max_tokens=4, output_kind=RequestOutputKind.FINAL_ONLY)
    request = engine_request({"prompt_token_ids": [1]}, final, "r", {})
    assert request.collect and request.params.output_kind == RequestOutputKind.DELTA
    assert final.output_kind == RequestOutputKind.FINAL_ONLY  # the caller's is left as it was
    streamed = SamplingParams(max_tokens=4, output_kind=RequestOutputKind.DELTA)
    assert not engine_request({"prompt_token_ids": [1]}, streamed, "r", {}).collect


def test_the_session_header_or_else_the_user_goes_with_the_engine_request(model: Path) -> None:
    async def sessions() -> list[str | None]:
        s = await stack(model)
        request = completion(s.name, prompt=[15], max_tokens=2, user="ann")
        await s.api.completion(request, http_request({"x-session-id": "chat-9"}))
        await s.api.completion(request, http_request())
        await s.api.completion(completion(s.name, prompt=[15], max_tokens=2), http_request())
        return [sent.session for sent in s.handle.requests]

    assert run(sessions()) == ["chat-9", "ann", None]


@pytest.mark.parametrize("stream", [False, True])
def test_a_reasoning_parser_splits_the_reasoning_from_the_answer(model: Path, stream: bool) -> None:
    script = ["<think>", "w10", "w11", "</think>", "w12"]

    async def scenario() -> Any:
        s = await stack(model, reasoning_parser="deepseek_r1", script=script)
        request = ChatCompletionRequest.model_validate(
            {"model": s.name, "messages": [{"role": "user", "content": "w13"}], "stream": stream}
        )
        return await body(await s.api.chat(request, http_request()))

    answer = run(scenario())
    if not stream:
        message = answer["choices"][0]["message"]
        reasoning, content = (
            message.get("reasoning") or message.get("reasoning_content"),
            message["content"],
        )
    else:
        deltas = [c["delta"] for event in answer[:-1] for c in event["choices"]]
        reasoning = "".join(d.get("reasoning") or d.get("reasoning_content") or "" for d in deltas)
        content = "".join(d.get("content") or "" for d in deltas)
    assert (reasoning, content) == ("w10w11", "w12")


def test_without_a_reasoning_parser_the_reasoning_stays_in_the_content(model: Path) -> None:
    script = ["<think>", "w10", "</think>", "w12"]

    async def scenario() -> Any:
        s = await stack(model, script=script)
        request = ChatCompletionRequest.model_validate(
            {"model": s.name, "messages": [{"role": "user", "content": "w13"}]}
        )
        return await body(await s.api.chat(request, http_request()))

    message = run(scenario())["choices"][0]["message"]
    assert message["content"] == "<think>w10</think>w12"
    assert not (message.get("reasoning") or message.get("reasoning_content"))


@pytest.mark.parametrize(
    ("fields", "status", "code", "param"),
    [
        ({"model": "nope"}, 404, "model_not_found", "model"),
        ({"max_tokens": 10**6}, 400, "context_length_exceeded", "max_tokens"),
        ({"messages": [{"role": "user", "content": "w10 " * 300}]}, 400,
         "context_length_exceeded", None),
    ],
    ids=["unknown-model", "max-tokens", "prompt-too-long"],
)  # fmt: skip
def test_a_request_refused_before_the_engine_is_an_openai_error(
    model: Path, fields: dict, status: int, code: str | None, param: str | None
) -> None:
    async def scenario() -> FakeEngine:
        s = await stack(model)
        request = ChatCompletionRequest.model_validate(
            {"model": s.name, "messages": [{"role": "user", "content": "w10"}]} | fields
        )
        try:
            await s.api.chat(request, http_request())
        finally:
            assert s.fake.requests == []
        return s.fake

    with pytest.raises(OpenAIError) as raised:
        run(scenario())
    error = raised.value
    assert (error.status_code, error.type) == (status, "invalid_request_error")
    assert error.code == code and (param is None or error.param == param)


def test_the_prompt_travels_with_a_streams_first_output_only(model: Path) -> None:
    async def scenario() -> tuple[Any, list[bool]]:
        s = await stack(model)
        request = completion(
            s.name, prompt=[11, 12, 13], max_tokens=5, stream=True, echo=True,
            stream_options={"include_usage": True, "continuous_usage_stats": True},
        )  # fmt: skip
        return await body(await s.api.completion(request, http_request())), s.handle.with_prompt

    events, with_prompt = run(scenario())
    assert with_prompt == [True, False, False, False, False]
    usages = [event["usage"]["prompt_tokens"] for event in events[:-1] if event.get("usage")]
    assert usages and set(usages) == {3}  # every chunk still knows the prompt
