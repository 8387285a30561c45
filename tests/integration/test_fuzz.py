"""API fuzzing: generated and hostile requests never get a 5xx, and every error is OpenAI's shape.

Property-based part: Schemathesis generates requests from the ingress's own OpenAPI schema
(`GET /openapi.json`, built from vLLM's request models) for every route, schema-valid ones
(positive) and, for routes with a body, schema-invalid ones (negative). Every answer must be
below 500, every 4xx and every error event of a stream an OpenAI error body (a stream's never
a `server_error`), and `/health` 200 at the end. Hypothesis runs derandomized (seeded from the
test's source) with a fixed number of examples per route, so each run sends the same cases and
a CI failure reproduces locally.

Generated bodies are made cheap before they are sent: `max_tokens`, `max_completion_tokens` and
`max_output_tokens` are at most 8 (and 8 where a generation route was given no number: the
default is the rest of the context, thousands of tokens), `n` and `best_of` at most 2, and a
string `model` names the served model (else nearly every body stops at the model check). We
fuzz parsing and validation, not long generation: on the CI's 2 CPU cores, a few unbounded
answers would take the whole run.

Hand-made cases (beyond tests/integration/test_errors.py's) each assert their exact status.
"""

import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.schemas import APIOperation
from transformers import AutoTokenizer

from serve_app.core.constants import (
    CHAT_ROUTE,
    COMPLETIONS_ROUTE,
    DETOKENIZE_ROUTE,
    RESPONSES_ROUTE,
    TOKENIZE_ROUTE,
)
from serve_app.core.default_model import prepare_default_model
from tests.integration.figures import Figures
from tests.integration.test_errors import QUESTION, TYPES, chat

# Examples per operation and generation mode (GET routes: positive only; Hypothesis stops
# early where a route has fewer distinct requests, e.g. none without parameters).
EXAMPLES = {GenerationMode.POSITIVE: 70, GenerationMode.NEGATIVE: 35}
MIN_CASES = 500
FUZZ_TIMEOUT_S = 600  # a hard stop; the run takes about 2 minutes on 2 CPU cores
POST_ROUTES = {CHAT_ROUTE, COMPLETIONS_ROUTE, RESPONSES_ROUTE, TOKENIZE_ROUTE, DETOKENIZE_ROUTE}

MAX_TOKENS = 8
MAX_CHOICES = 2
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
CHOICE_FIELDS = ("n", "best_of")
# The field a generation route is given when its body sets no token limit.
TOKEN_LIMIT = {
    CHAT_ROUTE: "max_completion_tokens",
    COMPLETIONS_ROUTE: "max_tokens",
    RESPONSES_ROUTE: "max_output_tokens",
}


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def cheap(case: Case, model: str) -> Case:
    """The case with its generation kept short and a string `model` the served one."""
    body = case.body
    if not isinstance(body, dict):
        return case
    if isinstance(body.get("model"), str):
        body["model"] = model
    for field in TOKEN_FIELDS:
        if is_number(body.get(field)):
            body[field] = min(body[field], MAX_TOKENS)
    for field in CHOICE_FIELDS:
        if is_number(body.get(field)):
            body[field] = min(body[field], MAX_CHOICES)
    limit = TOKEN_LIMIT.get(case.path)
    if limit and body.get(limit) is None and not any(is_number(body.get(f)) for f in TOKEN_FIELDS):
        body[limit] = MAX_TOKENS
    return case


def send(http: httpx.Client, case: Case) -> httpx.Response:
    """The case as Schemathesis serializes it (JSON, or raw bytes), sent over `http`."""
    kwargs = case.as_transport_kwargs(base_url=str(http.base_url))
    body = {"json": kwargs["json"]} if "json" in kwargs else {"content": kwargs.get("data")}
    return http.request(
        kwargs["method"], kwargs["url"], params=kwargs["params"], headers=kwargs["headers"], **body
    )


def assert_openai_error(body: Any) -> None:
    """`body` is `{"error": {message, type, param, code}}` with OpenAI's value types."""
    assert isinstance(body, dict) and set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str | int)


def stream_errors(response: httpx.Response) -> list[Any]:
    """The bodies of the error events of a chat or completion stream (none in a JSON answer)."""
    if not response.headers.get("content-type", "").startswith("text/event-stream"):
        return []
    events = [line.removeprefix("data: ") for line in response.text.splitlines()]
    return [json.loads(event) for event in events if event.startswith('{"error"')]


def fuzz(http: httpx.Client, operation: APIOperation, mode: GenerationMode, model: str) -> int:
    """Send the operation's generated cases in `mode`; the number sent."""
    sent = 0

    @settings(
        max_examples=EXAMPLES[mode],
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=operation.as_strategy(generation_mode=mode).map(lambda case: cheap(case, model)))
    def check(case: Case) -> None:
        nonlocal sent
        sent += 1
        response = send(http, case)
        request = f"{case.method.upper()} {case.formatted_path} {case.query} {case.body!r}"
        failure = f"{request}\n-> {response.status_code} {response.text[:1000]}"
        assert response.status_code < 500, failure
        try:
            errors = [response.json()] if response.status_code >= 400 else stream_errors(response)
            for error in errors:
                assert_openai_error(error)
                assert error["error"]["type"] != "server_error"  # a crash within a stream
        except (AssertionError, ValueError) as exc:
            raise AssertionError(failure) from exc

    check()
    return sent


@pytest.mark.timeout(FUZZ_TIMEOUT_S, func_only=True)
def test_generated_requests_get_no_5xx_and_openai_errors(
    http: httpx.Client, model: str, figures: Figures
) -> None:
    response = http.get("/openapi.json")
    assert response.status_code == 200, response.text
    schema = schemathesis.openapi.from_dict(response.json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations if op.method == "post"} >= POST_ROUTES
    start, total = time.monotonic(), 0
    for operation in operations:
        modes = list(EXAMPLES) if operation.method == "post" else [GenerationMode.POSITIVE]
        for mode in modes:
            began = time.monotonic()
            sent = fuzz(http, operation, mode, model)
            total += sent
            elapsed = time.monotonic() - began
            print(f"{operation.label} ({mode.value}): {sent} cases in {elapsed:.0f} s")
    figures.record("fuzzing", cases=total, seconds=round(time.monotonic() - start))
    assert total >= MIN_CASES
    assert http.get("/health").status_code == 200


# ---- hand-made cases ------------------------------------------------------------------------


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """The OpenAI error of a response with this status, of the status's type."""
    assert response.status_code == status, response.text
    assert_openai_error(response.json())
    error = response.json()["error"]
    assert error["type"] == TYPES[status], error
    return error


def post_raw(http: httpx.Client, content: bytes, content_type: str) -> httpx.Response:
    return http.post(CHAT_ROUTE, content=content, headers={"Content-Type": content_type})


def test_a_body_that_is_not_utf8_is_400_invalid_json(http: httpx.Client, model: str) -> None:
    body = b'{"model": "%s", "messages": [{"role": "user", "content": "\xff"}]}' % model.encode()
    assert error_of(post_raw(http, body, "application/json"), 400)["code"] == "invalid_json"


def test_a_json_body_sent_as_text_plain_is_400_invalid_json(http: httpx.Client, model: str) -> None:
    body = json.dumps({"model": model, "messages": QUESTION}).encode()
    error = error_of(post_raw(http, body, "text/plain"), 400)
    assert error["code"] == "invalid_json" and "application/json" in error["message"]


def test_json_nested_ten_thousand_deep_is_400_invalid_json(http: httpx.Client, model: str) -> None:
    depth = 10_000
    body = b'{"model": "%s", "messages": %s%s}' % (model.encode(), b"[" * depth, b"]" * depth)
    assert error_of(post_raw(http, body, "application/json"), 400)["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 10**6, "temperature": 1}, None),  # vLLM names no param for it
        ({"max_tokens": -1}, "max_tokens"),
        ({"stop": ["x"] * 10**5}, "stop"),
        ({"messages": []}, None),  # refused by the chat template
        ({"messages": [{"role": "user", "content": 7}]}, "messages"),
        ({"messages": [{"role": "user", "content": None}]}, "messages"),
        ({"messages": [{"role": "user", "content": {"text": "hi"}}]}, None),  # when rendered
    ],
    ids=["n-million", "negative-max-tokens", "1e5-stops", "no-messages", "content-number",
         "content-null", "content-object"],
)  # fmt: skip
def test_hostile_chat_fields_are_400(
    http: httpx.Client, model: str, fields: dict[str, Any], param: str | None
) -> None:
    """`param` is the field named, less the union member pydantic appends (`stop.list[str]`)."""
    error = error_of(chat(http, model, **fields), 400)
    assert (error["param"] and error["param"].split(".")[0]) == param, error


@pytest.mark.parametrize(
    ("route", "fields", "param"),
    [
        (COMPLETIONS_ROUTE, {"prompt": "Paris is", "max_tokens": 10**9}, "max_tokens"),
        (RESPONSES_ROUTE, {"input": "Paris is", "max_output_tokens": 10**9}, "max_output_tokens"),
    ],
    ids=["completions", "responses"],
)
def test_a_billion_max_tokens_is_400_context_length_exceeded(
    http: httpx.Client, model: str, route: str, fields: dict[str, Any], param: str
) -> None:
    error = error_of(http.post(route, json={"model": model, **fields}), 400)
    assert (error["param"], error["code"]) == (param, "context_length_exceeded")


def test_a_prompt_of_only_special_tokens_is_answered(http: httpx.Client, model: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(prepare_default_model())
    prompt = "".join(tokenizer.all_special_tokens) * 3
    limits = {"model": model, "max_tokens": 4, "temperature": 0}
    response = http.post(COMPLETIONS_ROUTE, json={"prompt": prompt, **limits})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] <= 4
    messages = [{"role": "user", "content": prompt}]
    response = http.post(CHAT_ROUTE, json={"messages": messages, **limits})
    assert response.status_code == 200, response.text


def ask(http: httpx.Client, model: str) -> None:
    answer = chat(http, model, max_tokens=24, temperature=0)
    assert answer.status_code == 200, answer.text
    assert "Paris" in answer.json()["choices"][0]["message"]["content"]


def test_a_stream_nobody_reads_does_not_stop_the_service(
    http: httpx.Client, base_url: str, model: str
) -> None:
    """A client sends a long streamed request, reads nothing, then hangs up; meanwhile and
    after, others are answered."""
    body = json.dumps(
        {"model": model, "prompt": "Once upon a time", "max_tokens": 2000, "ignore_eos": True,
         "stream": True}
    ).encode()  # fmt: skip
    address = urlsplit(base_url)
    request = (
        f"POST {COMPLETIONS_ROUTE} HTTP/1.1\r\nHost: {address.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection((address.hostname, address.port)) as silent:
        silent.sendall(request)
        time.sleep(2)
        ask(http, model)
    ask(http, model)
    assert http.get("/health").status_code == 200
