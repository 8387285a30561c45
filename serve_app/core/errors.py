"""OpenAI-shaped errors: the one exception type both deployments raise and the ingress renders,
its wire shape, and a factory for every error the service answers with.

`OpenAIError` is what crosses Ray from the LLM server to the ingress (pickled inside Ray's
`RayTaskError`); everything else that goes wrong is mapped to one at the edge where it happens.
"""

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel

# OpenAI error types (`error.type`).
INVALID_REQUEST = "invalid_request_error"
NOT_FOUND = "not_found_error"
SERVICE_UNAVAILABLE = "service_unavailable_error"
SERVER_ERROR = "server_error"

# OpenAI error codes (`error.code`).
INVALID_JSON_CODE = "invalid_json"
CONTEXT_LENGTH_EXCEEDED_CODE = "context_length_exceeded"
REQUEST_TOO_LARGE_CODE = "request_too_large"
INVALID_API_KEY_CODE = "invalid_api_key"
MODEL_NOT_FOUND_CODE = "model_not_found"
ENGINE_FAILED_CODE = "engine_failed"
REPLICA_UNAVAILABLE_CODE = "replica_unavailable"
NO_REPLICA_CODE = "no_replica"
RATE_LIMIT_EXCEEDED_CODE = "rate_limit_exceeded"
SHUTTING_DOWN_CODE = "shutting_down"

# Seconds a client is asked to wait after a 503 (`Retry-After`): a replica whose engine failed
# is replaced, and a full queue drains, within seconds.
RETRY_AFTER_S = 1


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The body of every error response, and of a stream's error event."""

    error: ErrorDetail


class OpenAIError(Exception):
    """An error to return to the client as `{"error": {message, type, param, code}}`;
    `retry_after_s` becomes a `Retry-After` header (every 503 and 429 has one), sent with
    `headers`."""

    def __init__(
        self,
        message: str,
        status_code: int = HTTPStatus.BAD_REQUEST,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.extra_headers = dict(headers or {})
        # The constructor's arguments, so that a pickled copy (across Ray) is the same error.
        super().__init__(message, status_code, type, param, code, retry_after_s, self.extra_headers)
        self.message = message
        self.status_code = int(status_code)
        self.type = type
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        retry = {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}
        return self.extra_headers | retry

    def response_body(self) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorDetail(
                message=self.message, type=self.type, param=self.param, code=self.code
            )
        )


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(message, HTTPStatus.BAD_REQUEST, INVALID_REQUEST, param, code)


def invalid_json(message: str = "The request body is not valid JSON.") -> OpenAIError:
    return invalid_request(message, None, INVALID_JSON_CODE)


def context_length_exceeded(message: str, param: str) -> OpenAIError:
    return invalid_request(message, param, CONTEXT_LENGTH_EXCEEDED_CODE)


def too_many_logprobs(limit: int) -> OpenAIError:
    return invalid_request(f"At most {limit} logprobs per token are served.", "logprobs")


def request_too_large(limit: int) -> OpenAIError:
    return OpenAIError(
        f"The request body is larger than this server's limit of {limit} bytes.",
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        INVALID_REQUEST,
        None,
        REQUEST_TOO_LARGE_CODE,
    )


def invalid_api_key() -> OpenAIError:
    return OpenAIError(
        "Missing or invalid API key: send 'Authorization: Bearer <key>'.",
        HTTPStatus.UNAUTHORIZED,
        INVALID_REQUEST,
        None,
        INVALID_API_KEY_CODE,
    )


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(
        f"The model `{model}` does not exist.",
        HTTPStatus.NOT_FOUND,
        INVALID_REQUEST,
        "model",
        MODEL_NOT_FOUND_CODE,
    )


def service_unavailable(
    message: str, code: str | None = None, param: str | None = None
) -> OpenAIError:
    return OpenAIError(
        message, HTTPStatus.SERVICE_UNAVAILABLE, SERVICE_UNAVAILABLE, param, code, RETRY_AFTER_S
    )


def no_replica() -> OpenAIError:
    """No LLM-server replica runs (one is being replaced or started)."""
    return service_unavailable(
        "No model replica is running; one is starting, retry shortly.", NO_REPLICA_CODE
    )


def engine_failed(reason: str) -> OpenAIError:
    """The LLM-server replica's engine died or stalled: Serve replaces the replica."""
    return service_unavailable(
        f"The model's engine on this replica {reason}; it is being replaced, retry shortly.",
        ENGINE_FAILED_CODE,
    )


def internal_error(message: str) -> OpenAIError:
    return OpenAIError(message, HTTPStatus.INTERNAL_SERVER_ERROR, SERVER_ERROR)


def from_http_status(status_code: int, message: str) -> OpenAIError:
    """An error the HTTP framework raised itself (unknown route, wrong method, body too large)."""
    if status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
        return OpenAIError(message, status_code, INVALID_REQUEST, code=REQUEST_TOO_LARGE_CODE)
    error_type = NOT_FOUND if status_code == HTTPStatus.NOT_FOUND else INVALID_REQUEST
    return OpenAIError(message, status_code, error_type)


def from_status(status_code: int, message: str, param: str | None = None) -> OpenAIError:
    """The OpenAI error for an error vLLM's serving classes answered with (their types are
    Python-style, `BadRequestError`; OpenAI's are `invalid_request_error`)."""
    if status_code == HTTPStatus.NOT_FOUND and param == "model":
        return OpenAIError(message, status_code, INVALID_REQUEST, param, MODEL_NOT_FOUND_CODE)
    if status_code == HTTPStatus.SERVICE_UNAVAILABLE:
        return service_unavailable(message, param=param)
    not_implemented = status_code == HTTPStatus.NOT_IMPLEMENTED
    if status_code >= HTTPStatus.INTERNAL_SERVER_ERROR and not not_implemented:
        return OpenAIError(message, status_code, SERVER_ERROR, param)
    context = "maximum context length" in message or "greater than max_model_len" in message
    code = CONTEXT_LENGTH_EXCEEDED_CODE if context else None
    error_type = NOT_FOUND if status_code == HTTPStatus.NOT_FOUND else INVALID_REQUEST
    return OpenAIError(message, status_code, error_type, param, code)


# Pydantic's errors for a body that is no JSON object: another JSON value, or raw bytes (FastAPI
# parses a body as JSON only when its Content-Type says it is).
_NOT_AN_OBJECT = ("model_type", "model_attributes_type", "dict_type")


def from_validation_errors(errors: Sequence[Mapping[str, Any]]) -> OpenAIError:
    """The first of pydantic's validation errors of a request body, phrased for a client, with
    the offending parameter's path."""
    first = errors[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    if first.get("type") == "json_invalid":
        return invalid_json()
    if first.get("type") == "extra_forbidden":
        return invalid_request(f"Unrecognized request argument supplied: {param}", param)
    if first.get("type") == "missing" and not location:
        return invalid_json("The request body is missing.")
    if first.get("type") in _NOT_AN_OBJECT and not location:  # e.g. sent as text/plain
        return invalid_json(
            "The request body must be a JSON object, sent with Content-Type: application/json."
        )
    message = first.get("msg", "Invalid request")
    return invalid_request(f"{message} (parameter: {param})" if param else message, param)


def shutting_down() -> OpenAIError:
    """The service is draining before it stops: requests in flight finish, new ones go elsewhere."""
    return service_unavailable("The service is shutting down; retry shortly.", SHUTTING_DOWN_CODE)


def rate_limit_exceeded(
    limit: str, message: str, retry_after_s: int, headers: Mapping[str, str]
) -> OpenAIError:
    """A 429 as OpenAI sends it: `type` names the limit hit (`requests` or `tokens`)."""
    return OpenAIError(
        message,
        HTTPStatus.TOO_MANY_REQUESTS,
        limit,
        None,
        RATE_LIMIT_EXCEEDED_CODE,
        retry_after_s,
        headers,
    )
