"""The serving layer on a fake engine: the real LLMServer and serving classes, with
`tests/fake_engine.py` yielding real vLLM `RequestOutput`s in place of a model.

Covers what only minute-long integration runs covered before: choices re-indexed across
prompts, an error after the first SSE event, pacing inside `generate`, cancellation, and usage.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from serve_app.api.prompts import OffLoopRenderer, PromptRenderer
from serve_app.api.protocol import ChatCompletionRequest, CompletionRequest
from serve_app.api.serving.base import SSE_DONE, primed
from serve_app.api.serving.chat import ChatServing
from serve_app.api.serving.completion import CompletionServing
from serve_app.core.config import AppConfig, MetricsConfig
from serve_app.core.errors import OpenAIError
from serve_app.core.payloads import GenerateRequest, SamplingSpec
from serve_app.observability.metrics import IngressMetrics
from tests.fake_engine import (
    VOCABULARY,
    FakeEngine,
    InProcessLLMServer,
    start_llm_server,
    token_id,
    token_text,
)

MODEL = "fake/model"
PROMPTS = [[1, 2, 3], [7, 8]]


@pytest.fixture(autouse=True)
def _cpu_kv_cache_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """LLMServer sets the CPU backend's KV-cache size in the environment; keep it to the test."""
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="module")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> OffLoopRenderer:
    """A real renderer: a word-level tokenizer of the fake engine's words, with a chat template."""
    words = {"[UNK]": 0} | {token_text(10 + i).strip(): 10 + i for i in range(VOCABULARY)}
    tokenizer = Tokenizer(models.WordLevel(words, "[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")
    fast.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    path: Path = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(path)
    return OffLoopRenderer(PromptRenderer(str(path)))


def app_config(**overrides: Any) -> AppConfig:
    return AppConfig.model_validate({"model": MODEL, "warmup": False} | overrides)


async def serving(
    renderer: OffLoopRenderer, config: AppConfig | None = None, **engine: Any
) -> tuple[CompletionServing, ChatServing, FakeEngine]:
    config = config or app_config()
    server, fake = await start_llm_server(config, **engine)
    parts = (
        InProcessLLMServer(server),
        renderer,
        config.served_name,
        IngressMetrics(config.served_name, MetricsConfig()),
    )
    return CompletionServing(*parts), ChatServing(*parts), fake


async def events(stream: AsyncIterator[str]) -> list[Any]:
    """The SSE events of a stream, parsed; `[DONE]` as the string."""
    parsed = []
    async for event in await primed(stream):
        assert event.startswith("data: ") and event.endswith("\n\n")
        payload = event.removeprefix("data: ").strip()
        parsed.append(payload if payload == "[DONE]" else json.loads(payload))
    return parsed


def expected_text(prompt: list[int], choice: int, tokens: int) -> str:
    return "".join(token_text(token_id(prompt, choice, step)) for step in range(tokens))


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def whole_and_streamed(
    renderer: OffLoopRenderer, request: CompletionRequest, **stream_fields: Any
) -> tuple[Any, list[Any]]:
    """The response to `request`, and the events of the same request streamed."""

    async def scenario() -> tuple[Any, list[Any]]:
        completions, _, _ = await serving(renderer)
        streamed = CompletionRequest.model_validate(
            request.model_dump() | {"stream": True} | stream_fields
        )
        return await completions.complete(request), await events(completions.stream(streamed))

    return run(scenario())


def test_choices_of_several_prompts_are_indexed_prompt_by_prompt(
    renderer: OffLoopRenderer,
) -> None:
    request = CompletionRequest(model=MODEL, prompt=PROMPTS, n=2, max_tokens=3, temperature=0.8)
    whole, streamed = whole_and_streamed(renderer, request)
    expected = {
        prompt_index * 2 + choice: expected_text(prompt, choice, 3)
        for prompt_index, prompt in enumerate(PROMPTS)
        for choice in range(2)
    }
    assert {c.index: c.text for c in whole.choices} == expected
    assert [c.index for c in whole.choices] == [0, 1, 2, 3]
    texts: dict[int, str] = {}
    for event in streamed[:-1]:
        for choice in event["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    assert texts == expected
    assert streamed[-1] == "[DONE]"


def test_an_error_after_the_first_event_ends_the_stream_with_an_error_event_then_done(
    renderer: OffLoopRenderer,
) -> None:
    async def scenario() -> list[Any]:
        completions, _, _ = await serving(renderer, fail_at_step=2)
        request = CompletionRequest(model=MODEL, prompt=[5, 6], max_tokens=8, stream=True)
        return await events(completions.stream(request))

    streamed = run(scenario())
    text = "".join(c["text"] for event in streamed[:-2] for c in event["choices"])
    assert text == expected_text([5, 6], 0, 2)
    assert streamed[-2]["error"]["type"] == "invalid_request_error"
    assert "fake refusal at step 2" in streamed[-2]["error"]["message"]
    assert streamed[-1] == "[DONE]"


def test_an_error_before_the_first_event_is_a_plain_error_not_a_stream(
    renderer: OffLoopRenderer,
) -> None:
    async def scenario() -> None:
        completions, _, _ = await serving(renderer, fail_at_step=0)
        request = CompletionRequest(model=MODEL, prompt=[5, 6], max_tokens=8, stream=True)
        await primed(completions.stream(request))

    with pytest.raises(OpenAIError) as raised:
        run(scenario())
    assert raised.value.status_code == 400


def test_over_its_chunk_budget_the_server_merges_tokens_and_loses_none() -> None:
    tokens = 400

    async def scenario(chunks_per_second: float | None, step_s: float) -> list[Any]:
        config = app_config(max_chunks_per_second=chunks_per_second)
        server, _ = await start_llm_server(config, step_s=step_s)
        request = GenerateRequest(
            request_id="paced", prompt_token_ids=[3, 4], sampling=SamplingSpec(max_tokens=tokens)
        )
        return [chunk async for chunk in server.generate(request)]

    # ~200 engine outputs a second against a budget of 20 chunks: after the pacer's first
    # half-second window, ~10 tokens a chunk.
    paced, unpaced = run(scenario(20.0, 0.005)), run(scenario(None, 0.0))
    for chunks in (paced, unpaced):
        text = "".join(d.text for c in chunks for d in c.choices)
        assert text == expected_text([3, 4], 0, tokens)
        assert sum(d.num_tokens for c in chunks for d in c.choices) == tokens
        assert chunks[0].choices[0].num_tokens == 1  # the first token never waits
        assert chunks[-1].choices[0].finish_reason == "length"
    assert len(unpaced) == tokens
    assert len(paced) < tokens * 0.6


def test_a_consumer_that_leaves_aborts_the_request_in_the_engine(
    renderer: OffLoopRenderer,
) -> None:
    async def scenario() -> tuple[FakeEngine, int]:
        completions, _, fake = await serving(renderer, step_s=0.01)
        request = CompletionRequest(model=MODEL, prompt=[1], max_tokens=200, stream=True)
        stream = await primed(completions.stream(request))
        received = [await anext(stream) for _ in range(3)]
        await stream.aclose()
        return fake, len(received)

    fake, received = run(scenario())
    assert received == 3
    assert len(fake.requests) == 1
    assert fake.aborted == fake.requests


def test_usage_counts_every_prompt_and_every_choice_streamed_or_not(
    renderer: OffLoopRenderer,
) -> None:
    request = CompletionRequest(model=MODEL, prompt=PROMPTS, n=2, max_tokens=5, temperature=0.8)
    whole, streamed = whole_and_streamed(renderer, request, stream_options={"include_usage": True})
    prompt_tokens = sum(map(len, PROMPTS))
    assert whole.usage.model_dump() == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 4 * 5,
        "total_tokens": prompt_tokens + 20,
    }
    assert whole.vllm_stats.time_to_first_token_seconds is not None
    usage_event = streamed[-2]
    assert usage_event["choices"] == []
    assert usage_event["usage"] == whole.usage.model_dump()
    assert all("usage" not in event for event in streamed[:-2])


def test_a_streamed_chat_opens_each_choice_with_the_assistant_role_once(
    renderer: OffLoopRenderer,
) -> None:
    async def scenario() -> list[Any]:
        _, chat, _ = await serving(renderer)
        request = ChatCompletionRequest(
            model=MODEL,
            messages=[{"role": "user", "content": "w10 w11"}],
            n=2,
            max_tokens=4,
            temperature=0.8,
            stream=True,
        )
        return await events(chat.stream(request))

    streamed = run(scenario())
    roles: dict[int, list[str]] = {0: [], 1: []}
    for event in streamed[:-1]:
        for choice in event["choices"]:
            if "role" in choice["delta"]:
                roles[choice["index"]].append(choice["delta"]["role"])
    assert roles == {0: ["assistant"], 1: ["assistant"]}
    assert streamed[-1] == SSE_DONE.removeprefix("data: ").strip()


def test_the_llm_server_reports_the_engines_limits_and_kv_cache() -> None:
    async def scenario() -> tuple[Any, Any]:
        server, _ = await start_llm_server(app_config())
        return await server.model_info(), await server.engine_stats()

    info, stats = run(scenario())
    assert (info.max_model_len, info.max_logprobs, info.accelerator) == (256, 20, "cpu")
    assert (stats.kv_cache_tokens, stats.cpu_kvcache_gib) == (64 * 16, 1.0)
