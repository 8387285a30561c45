"""Differential tests: the same requests to bare `vllm serve` and to our service, same model,
same engine arguments, same OpenAI flags (the bundled `chatml_tools` template, the `hermes`
tool parser, auto tool choice), at temperature 0 or a fixed seed; the answers compared field
by field: content, tool calls, finish reasons, usage, logprobs, streamed and not.

Documented differences, checked here too: our non-streamed chat and completion responses
add `vllm_stats`; our errors carry OpenAI's types (`invalid_request_error`, where vLLM says
`BadRequestError`) with the same status; ids, timestamps and tool-call ids differ.
"""

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from ray.serve.schema import ServeDeploySchema

from benchmarks.lib.serving_stacks import bare_vllm, engine_setup, openai_flags
from serve_app.core.config import AppConfig
from serve_app.runtime.runner import deploy
from serve_app.runtime.serve_config import derive
from tests.ports import free_port

TOOL_ARGS = {
    "chat_template": "chatml_tools",
    "tool_call_parser": "hermes",
    "enable_auto_tool_choice": True,
}
REDEPLOY_TIMEOUT_S = 600
# A 135M model writes its forced tool calls' JSON at length (it copies the schema into the
# arguments): room for the call to end.
TOOL_TOKENS = 200
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            # A choice of cities: a forced call of a 135M model ends, not a string that never does
            "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]}},
            "required": ["city"],
        },
    },
}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


def _wait_for(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what} not within {timeout_s:.0f}s"
        time.sleep(2)


def _tools_accepted(http: httpx.Client, model: str) -> bool:
    body = {"model": model, "messages": CAPITAL, "max_tokens": 1, "tools": [WEATHER]}
    return http.post("/v1/chat/completions", json={**body, "tool_choice": "auto"}).is_success


@pytest.fixture(scope="module")
def bare(
    deploy_config: ServeDeploySchema, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    """Bare vLLM with the engine arguments and OpenAI flags of our parity config."""
    args = {**deploy_config.applications[0].args, **TOOL_ARGS}
    port = free_port()
    log = tmp_path_factory.mktemp("bare") / "vllm.log"
    setup = engine_setup(AppConfig.model_validate(args))
    with (
        bare_vllm(setup, log, port, openai_flags(args)),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def ours(
    bare: httpx.Client, deploy_config: ServeDeploySchema, http: httpx.Client, model: str
) -> Iterator[httpx.Client]:
    """The session's app redeployed with the parity config, restored (and checked) after."""
    deploy(derive(deploy_config, TOOL_ARGS))
    _wait_for(lambda: _tools_accepted(http, model), REDEPLOY_TIMEOUT_S, "tools accepted")
    yield http
    deploy(deploy_config)
    _wait_for(
        lambda: not _tools_accepted(http, model), REDEPLOY_TIMEOUT_S, "the shipped config back"
    )
    _wait_for(lambda: http.get("/health").status_code == 200, REDEPLOY_TIMEOUT_S, "healthy again")


def both(ours: httpx.Client, bare: httpx.Client, path: str, body: dict) -> tuple[Any, Any]:
    """Our response and bare vLLM's to the same request, one after the other."""
    mine, theirs = ours.post(path, json=body), bare.post(path, json=body)
    assert (mine.status_code, theirs.status_code) == (200, 200), (mine.text, theirs.text)
    return mine.json(), theirs.json()


def comparable(response: dict) -> dict:
    """A response without what differs by design: ids, times, tool-call ids, vllm_stats, and
    the prompt tokens found in or added to the prefix cache (each server's cache holds what it
    served before: ours, the whole session's other tests)."""
    skip = {"id", "created", "created_at", "vllm_stats", "system_fingerprint"}
    cleaned = {key: value for key, value in response.items() if key not in skip}
    return json.loads(json.dumps(cleaned), object_hook=_without_ids)


_PER_SERVER = ("id", "call_id", "item_id", "cached_tokens", "created_cache_tokens")


def _without_ids(value: dict) -> dict:
    return {k: v for k, v in value.items() if k not in _PER_SERVER}


def test_a_plain_chat_with_logprobs_is_the_same(
    ours: httpx.Client, bare: httpx.Client, model: str
) -> None:
    body = {
        "model": model, "messages": CAPITAL, "max_tokens": 24, "temperature": 0,
        "logprobs": True, "top_logprobs": 2,
    }  # fmt: skip
    mine, theirs = both(ours, bare, "/v1/chat/completions", body)
    assert comparable(mine) == comparable(theirs)
    assert "Paris" in mine["choices"][0]["message"]["content"]
    assert mine["vllm_stats"]["tokens_per_second"] > 0 and "vllm_stats" not in theirs


@pytest.mark.parametrize(
    "fields",
    [
        {"echo": True, "logprobs": 2},
        {"prompt_logprobs": 1},
        {"n": 3, "temperature": 0.9, "seed": 7},
        {"logit_bias": {"28": 100}},
        {"prompt": ["The capital of France is", "Two plus two is"], "n": 2, "seed": 3,
         "temperature": 0.8},
        {"stop": ["."], "max_tokens": 40, "min_tokens": 2, "repetition_penalty": 1.3},
    ],
    ids=["echo-logprobs", "prompt-logprobs", "n-seed", "logit-bias", "prompts-n", "stop"],
)  # fmt: skip
def test_completions_are_the_same(
    ours: httpx.Client, bare: httpx.Client, model: str, fields: dict
) -> None:
    body = {"model": model, "prompt": "The capital of France is", "max_tokens": 12,
            "temperature": 0} | fields  # fmt: skip
    mine, theirs = both(ours, bare, "/v1/completions", body)
    assert comparable(mine) == comparable(theirs)


@pytest.mark.parametrize(
    "fields",
    [
        {"response_format": {"type": "json_object"}},
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "city",
                    "schema": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
                        "required": ["city", "country"],
                    },
                },
            }
        },
        {"structured_outputs": {"choice": ["Paris", "London", "Rome"]}},
        {"structured_outputs": {"regex": "[A-Z][a-z]+, [A-Z][a-z]+"}},
    ],
    ids=["json-object", "json-schema", "choice", "regex"],
)
def test_structured_outputs_are_the_same(
    ours: httpx.Client, bare: httpx.Client, model: str, fields: dict
) -> None:
    body = {"model": model, "messages": CAPITAL, "max_tokens": 40, "temperature": 0} | fields
    mine, theirs = both(ours, bare, "/v1/chat/completions", body)
    assert comparable(mine) == comparable(theirs)
    content = mine["choices"][0]["message"]["content"]
    if "json_schema" in fields.get("response_format", {}).get("type", ""):
        assert set(json.loads(content)) >= {"city", "country"}


@pytest.mark.parametrize(
    "tool_choice",
    ["required", {"type": "function", "function": {"name": "get_weather"}}, "auto", "none"],
    ids=["required", "named", "auto", "none"],
)
def test_tool_calls_are_the_same(
    ours: httpx.Client, bare: httpx.Client, model: str, tool_choice: Any
) -> None:
    body = {
        "model": model, "messages": QUESTION, "max_tokens": TOOL_TOKENS, "temperature": 0,
        "tools": [WEATHER], "tool_choice": tool_choice,
    }  # fmt: skip
    mine, theirs = both(ours, bare, "/v1/chat/completions", body)
    assert comparable(mine) == comparable(theirs)
    if tool_choice not in ("none", "auto"):
        (call,) = mine["choices"][0]["message"]["tool_calls"]
        assert call["function"]["name"] == "get_weather"
        assert isinstance(json.loads(call["function"]["arguments"]), dict)


def test_tool_messages_in_the_history_give_the_same_answer(
    ours: httpx.Client, bare: httpx.Client, model: str
) -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip
    history = [
        {"role": "developer", "content": "Answer in one sentence."},
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 degrees."},
    ]
    body = {"model": model, "messages": history, "max_tokens": 32, "temperature": 0,
            "tools": [WEATHER]}  # fmt: skip
    mine, theirs = both(ours, bare, "/v1/chat/completions", body)
    assert comparable(mine) == comparable(theirs)


def _streamed(client: httpx.Client, path: str, body: dict) -> list[dict]:
    events = []
    with client.stream("POST", path, json=body | {"stream": True}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line.removeprefix("data: ")))
    return [_without_ids(json.loads(json.dumps(e), object_hook=_without_ids)) for e in events]


@pytest.mark.parametrize(
    "fields",
    [
        {"stream_options": {"include_usage": True, "continuous_usage_stats": True}},
        {"tools": [WEATHER], "tool_choice": "required"},
        {"n": 2, "seed": 11, "temperature": 0.7, "logprobs": True},
    ],
    ids=["usage", "tool-call-deltas", "n-logprobs"],
)
def test_streamed_chats_are_the_same_event_by_event(
    ours: httpx.Client, bare: httpx.Client, model: str, fields: dict
) -> None:
    body = {"model": model, "messages": QUESTION, "max_tokens": 24, "temperature": 0} | fields
    mine = _by_choice(_streamed(ours, "/v1/chat/completions", body))
    assert mine == _by_choice(_streamed(bare, "/v1/chat/completions", body))


def _by_choice(events: list[dict]) -> dict[Any, list]:
    """Each choice's deltas in order (choices of one request interleave by timing), and the
    events without choices (usage)."""
    deltas: dict[Any, list] = {"no choice": []}
    for event in events:
        for choice in event["choices"]:
            deltas.setdefault(choice["index"], []).append(choice)
        if not event["choices"]:
            deltas["no choice"].append({k: v for k, v in event.items() if k != "created"})
        elif event.get("usage"):
            deltas.setdefault("usage", []).append(event["usage"])
    return deltas


def test_the_responses_api_is_the_same_both_ways(
    ours: httpx.Client, bare: httpx.Client, model: str
) -> None:
    body = {"model": model, "input": "What is the capital of France?", "max_output_tokens": 24,
            "temperature": 0}  # fmt: skip
    mine, theirs = both(ours, bare, "/v1/responses", body)
    assert comparable(mine)["output"] == comparable(theirs)["output"]
    assert mine["usage"] == theirs["usage"] and mine["status"] == "completed"

    def events(client: httpx.Client) -> list[tuple[str, Any]]:
        seen = []
        with client.stream("POST", "/v1/responses", json=body | {"stream": True}) as response:
            kind = None
            for line in response.iter_lines():
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    data = json.loads(line.removeprefix("data: "))
                    delta = data.get("delta")
                    if seen and kind == seen[-1][0] and isinstance(delta, str):
                        # How many tokens one delta carries depends on timing on both sides
                        # (an engine step can bring two): compare the text of a run of deltas.
                        seen[-1] = (kind, seen[-1][1] + delta)
                    else:
                        seen.append((kind, delta))
        return seen

    assert events(ours) == events(bare)


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 5}}},
         400),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         400),
        ({"max_tokens": 10**6}, 400),
        ({"messages": []}, 400),
        ({"some_field_vllm_ignores": 1}, 200),
    ],
    ids=["invalid-schema", "unknown-tool", "max-tokens", "no-messages", "unknown-field"],
)  # fmt: skip
def test_refusals_have_vllms_status_and_openais_shape(
    ours: httpx.Client, bare: httpx.Client, model: str, fields: dict, status: int
) -> None:
    body = {"model": model, "messages": CAPITAL, "max_tokens": 4} | fields
    mine = ours.post("/v1/chat/completions", json=body)
    theirs = bare.post("/v1/chat/completions", json=body)
    assert (mine.status_code, theirs.status_code) == (status, status), (mine.text, theirs.text)
    if status != 200:
        error = mine.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"]


def test_an_agent_loop_calls_the_tool_and_answers_with_its_result(
    ours: httpx.Client, base_url: str, model: str
) -> None:
    """What a tool-using client written against `vllm serve` does, unchanged."""
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    messages: list[Any] = list(QUESTION)
    first = client.chat.completions.create(
        model=model, messages=messages, tools=[WEATHER], tool_choice="required",
        max_tokens=TOOL_TOKENS, temperature=0,
    )  # fmt: skip
    (call,) = first.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    city = arguments.get("city", "Paris") if isinstance(arguments, dict) else "Paris"
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": f"Sunny in {city}."})
    final = client.chat.completions.create(
        model=model, messages=messages, tools=[WEATHER], max_tokens=32, temperature=0
    )
    answer = final.choices[0]
    assert answer.finish_reason in ("stop", "length")
    assert answer.message.content and not answer.message.tool_calls
