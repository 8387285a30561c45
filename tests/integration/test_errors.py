"""Bad requests get OpenAI-shaped errors with the right status, type and param."""

from collections.abc import Iterator

import httpx
import openai
import pytest
from ray.serve.schema import ServeDeploySchema

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


# OpenAI's error type for each status this service answers with.
TYPES = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
}


def assert_error(
    response: httpx.Response,
    status: int,
    param: str | None,
    mentions: str,
    code: str | None = None,
    error_type: str | None = None,
) -> None:
    """An OpenAI error body: this status, its type (the status's unless given), this param
    and code (None included), and a message that mentions `mentions` (any case)."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == (
        error_type or TYPES[status],
        param,
        code,
    ), error
    assert mentions.lower() in error["message"].lower(), error


def chat(http: httpx.Client, model: str, **fields: object) -> httpx.Response:
    return http.post("/v1/chat/completions", json={"model": model, "messages": QUESTION, **fields})


def test_malformed_json_is_400(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions", content=b'{"model": ', headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, None, "not valid JSON", "invalid_json")


def test_missing_body_is_400(http: httpx.Client) -> None:
    assert_error(http.post("/v1/completions"), 400, None, "body is missing", "invalid_json")


def test_missing_messages_is_400(http: httpx.Client, model: str) -> None:
    response = http.post("/v1/chat/completions", json={"model": model})
    assert_error(response, 400, "messages", "Field required (parameter: messages)")


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [("temperature", "hot", "temperature"), ("max_tokens", "many", "max_tokens"), ("n", [1], "n"),
     ("stream", "maybe", "stream"), ("stop", 3, "stop.str")],
)  # fmt: skip
def test_wrong_types_are_400_naming_the_param(
    http: httpx.Client, model: str, field: str, value: object, param: str
) -> None:
    assert_error(chat(http, model, **{field: value}), 400, param, f"(parameter: {param})")


def test_messages_that_are_not_a_list_are_400(http: httpx.Client, model: str) -> None:
    response = http.post("/v1/chat/completions", json={"model": model, "messages": "hi"})
    assert_error(response, 400, "messages", "valid list")


def test_unknown_model_is_404(http: httpx.Client) -> None:
    response = chat(http, "gpt-nonexistent")
    assert_error(response, 404, "model", "`gpt-nonexistent` does not exist", "model_not_found")


def test_unknown_model_on_completions_is_404(http: httpx.Client) -> None:
    response = http.post("/v1/completions", json={"model": "nope", "prompt": "hi"})
    assert_error(response, 404, "model", "`nope` does not exist", "model_not_found")


def test_max_tokens_beyond_the_context_is_400(http: httpx.Client, model: str) -> None:
    response = chat(http, model, max_tokens=10_000_000)
    assert_error(
        response, 400, "max_tokens", "max_tokens=10000000 cannot be greater than max_model_len",
        "context_length_exceeded",
    )  # fmt: skip


def test_prompt_longer_than_the_context_is_400(http: httpx.Client, model: str) -> None:
    # Within the characters a context could hold, so vLLM counts the tokens and refuses.
    max_len = http.get("/v1/models").json()["data"][0]["max_model_len"]
    prompt = "hello " * (max_len + 10)
    response = http.post("/v1/completions", json={"model": model, "prompt": prompt})
    assert_error(
        response, 400, "input_tokens", f"maximum context length is {max_len} tokens",
        "context_length_exceeded",
    )  # fmt: skip


def test_prompt_that_cannot_fit_is_refused_before_tokenizing(
    client: openai.OpenAI, http: httpx.Client, model: str
) -> None:
    # No token of the default model covers more than 81 characters, so this many cannot fit.
    max_len = http.get("/v1/models").json()["data"][0]["max_model_len"]
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model, prompt="hello " * (max_len * 14), max_tokens=1)
    error = info.value.body
    assert isinstance(error, dict)
    assert (error["param"], error["code"]) == ("prompt", "context_length_exceeded")
    assert "characters" in error["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi " * (max_len * 28)}]
        )
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "messages"


def request_limit(deploy_config: ServeDeploySchema) -> int:
    return int(deploy_config.applications[0].args["max_request_bytes"])


def test_body_over_the_limit_is_413_and_the_service_carries_on(
    client: openai.OpenAI, deploy_config: ServeDeploySchema, model: str
) -> None:
    limit = request_limit(deploy_config)
    with pytest.raises(openai.APIStatusError) as info:
        client.completions.create(model=model, prompt="x" * (limit + 1), max_tokens=1)
    assert info.value.status_code == 413
    error = info.value.body
    assert isinstance(error, dict)
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
    assert str(limit) in error["message"]
    answer = client.completions.create(model=model, prompt="Paris is", max_tokens=2)
    assert answer.usage is not None and answer.usage.completion_tokens == 2


def test_chunked_body_over_the_limit_is_413(
    http: httpx.Client, deploy_config: ServeDeploySchema
) -> None:
    limit = request_limit(deploy_config)

    def body() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield b'{"model": "m", "prompt": "'
        for _ in range(limit // 65536 + 1):
            yield b"x" * 65536
        yield b'"}'

    response = http.post(
        "/v1/completions", content=body(), headers={"Content-Type": "application/json"}
    )
    assert_error(response, 413, None, f"limit of {limit} bytes", "request_too_large")


@pytest.mark.parametrize(
    ("field", "value", "param", "mentions"),
    [
        ("temperature", -0.5, "temperature", "temperature must be non-negative, got -0.5"),
        ("top_p", 0, "top_p", "top_p must be in (0, 1], got 0.0"),
        ("top_p", 1.5, "top_p", "top_p must be in (0, 1], got 1.5"),
        ("max_tokens", 0, "max_tokens", "max_tokens must be at least 1, got 0"),
        ("n", 0, None, "n must be at least 1, got 0"),
        ("presence_penalty", 3, None, "presence_penalty must be in [-2, 2], got 3.0"),
        ("frequency_penalty", -3, None, "frequency_penalty must be in [-2, 2], got -3.0"),
        ("top_logprobs", 50, None, "logprobs of 50"),
        ("tools", [], "tools", "`tools` must not be an empty array"),
    ],
)
def test_values_vllm_refuses_are_400(
    http: httpx.Client, model: str, field: str, value: object, param: str | None, mentions: str
) -> None:
    """vLLM's checks, with its param where it names one (the same status as `vllm serve`:
    tests/integration/test_vllm_parity.py)."""
    extra = {"logprobs": True} if field == "top_logprobs" else {}
    assert_error(chat(http, model, **{field: value}, **extra), 400, param, mentions)


def test_several_greedy_choices_are_400(http: httpx.Client, model: str) -> None:
    response = chat(http, model, n=2, temperature=0)
    assert_error(response, 400, None, "n must be 1 when using greedy sampling")


def test_top_logprobs_without_logprobs_is_400(http: httpx.Client, model: str) -> None:
    response = chat(http, model, top_logprobs=2)
    assert_error(response, 400, "top_logprobs", "`logprobs` must be set to true")


def test_stream_options_without_stream_is_400(http: httpx.Client, model: str) -> None:
    response = chat(http, model, stream_options={"include_usage": True})
    assert_error(response, 400, "stream_options", "only be defined when `stream=True`")


def test_an_unknown_argument_is_ignored_as_vllm_does(http: httpx.Client, model: str) -> None:
    response = chat(http, model, best_of=3, max_tokens=2, temperature=0)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 2


def test_out_of_vocabulary_token_is_400_from_the_engine(http: httpx.Client, model: str) -> None:
    response = http.post(
        "/v1/completions", json={"model": model, "prompt": [10_000_000], "max_tokens": 2}
    )
    assert_error(response, 400, None, "Token id 10000000 is out of vocabulary")


def test_out_of_vocabulary_token_while_streaming_is_400(http: httpx.Client, model: str) -> None:
    response = http.post(
        "/v1/completions",
        json={"model": model, "prompt": [10_000_000], "max_tokens": 2, "stream": True},
    )
    assert_error(response, 400, None, "Token id 10000000 is out of vocabulary")


def test_unknown_route_is_an_openai_404(http: httpx.Client) -> None:
    response = http.get("/v1/engines")
    assert_error(response, 404, None, "Not Found", error_type="not_found_error")


def test_wrong_method_is_405(http: httpx.Client) -> None:
    assert_error(http.get("/v1/chat/completions"), 405, None, "Method Not Allowed")
