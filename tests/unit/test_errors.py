"""The error mapping: every status the service answers with, its OpenAI type, code and param,
and the `Retry-After` of the errors a client may retry."""

import pytest

from serve_app.core import errors
from serve_app.core.errors import OpenAIError


def fields(error: OpenAIError) -> tuple[int, str, str | None, str | None, int | None]:
    return error.status_code, error.type, error.code, error.param, error.retry_after_s


@pytest.mark.parametrize(
    ("answered", "expected"),
    [
        ((400, "bad", "temperature"), (400, "invalid_request_error", None, "temperature", None)),
        ((400, "This model's maximum context length is 2048 tokens.", "input_tokens"),
         (400, "invalid_request_error", "context_length_exceeded", "input_tokens", None)),
        ((400, "max_tokens is greater than max_model_len", None),
         (400, "invalid_request_error", "context_length_exceeded", None, None)),
        ((404, "The model `m` does not exist.", "model"),
         (404, "invalid_request_error", "model_not_found", "model", None)),
        ((404, "no such response", None), (404, "not_found_error", None, None, None)),
        ((501, "not implemented", None), (501, "invalid_request_error", None, None, None)),
        ((503, "busy", None), (503, "service_unavailable_error", None, None, 1)),
        ((500, "boom", None), (500, "server_error", None, None, None)),
    ],
    ids=["400", "context-length", "max-model-len", "404-model", "404", "501", "503", "500"],
)  # fmt: skip
def test_a_vllm_error_status_becomes_the_openai_error(
    answered: tuple[int, str, str | None], expected: tuple
) -> None:
    error = errors.from_status(*answered)
    assert fields(error) == expected
    assert error.message == answered[1]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (404, (404, "not_found_error", None, None, None)),
        (405, (405, "invalid_request_error", None, None, None)),
        (413, (413, "invalid_request_error", "request_too_large", None, None)),
    ],
)
def test_an_http_framework_error_becomes_the_openai_error(status: int, expected: tuple) -> None:
    assert fields(errors.from_http_status(status, "said by the framework")) == expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (errors.invalid_json(), (400, "invalid_request_error", "invalid_json", None, None)),
        (errors.context_length_exceeded("long", "messages"),
         (400, "invalid_request_error", "context_length_exceeded", "messages", None)),
        (errors.request_too_large(10),
         (413, "invalid_request_error", "request_too_large", None, None)),
        (errors.invalid_api_key(), (401, "invalid_request_error", "invalid_api_key", None, None)),
        (errors.model_not_found("m"),
         (404, "invalid_request_error", "model_not_found", "model", None)),
        (errors.no_replica(), (503, "service_unavailable_error", "no_replica", None, 1)),
        (errors.engine_failed("died"),
         (503, "service_unavailable_error", "engine_failed", None, 1)),
        (errors.shutting_down(), (503, "service_unavailable_error", "shutting_down", None, 1)),
        (errors.internal_error("boom"), (500, "server_error", None, None, None)),
        (errors.rate_limit_exceeded("tokens", "slow down", 7, {}),
         (429, "tokens", "rate_limit_exceeded", None, 7)),
    ],
    ids=lambda value: value.code or value.type if isinstance(value, OpenAIError) else "",
)  # fmt: skip
def test_each_error_the_service_raises_has_its_status_type_code_and_param(
    error: OpenAIError, expected: tuple
) -> None:
    assert fields(error) == expected
    assert error.message


def test_a_retried_error_carries_retry_after_and_its_own_headers() -> None:
    error = errors.rate_limit_exceeded("requests", "slow down", 7, {"x-ratelimit-limit": "1"})
    assert error.headers() == {"x-ratelimit-limit": "1", "Retry-After": "7"}
    assert errors.invalid_json().headers() == {}


@pytest.mark.parametrize(
    ("pydantic_error", "expected"),
    [
        ({"type": "json_invalid", "loc": ("body", 1), "msg": "x"},
         (400, "invalid_request_error", "invalid_json", None, None)),
        ({"type": "missing", "loc": ("body",), "msg": "x"},
         (400, "invalid_request_error", "invalid_json", None, None)),
        ({"type": "model_type", "loc": ("body",), "msg": "x"},
         (400, "invalid_request_error", "invalid_json", None, None)),
        ({"type": "float_parsing", "loc": ("body", "temperature"), "msg": "not a number"},
         (400, "invalid_request_error", None, "temperature", None)),
        ({"type": "extra_forbidden", "loc": ("body", "messages", 0, "bogus"), "msg": "x"},
         (400, "invalid_request_error", None, "messages.0.bogus", None)),
    ],
    ids=["json", "missing-body", "not-an-object", "wrong-type", "unknown-field"],
)  # fmt: skip
def test_a_validation_error_names_the_offending_param(
    pydantic_error: dict, expected: tuple
) -> None:
    error = errors.from_validation_errors([pydantic_error])
    assert fields(error) == expected
    if expected[3] is not None:
        assert expected[3] in error.message
