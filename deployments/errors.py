"""OpenAI-shaped errors: one exception type that both deployments raise and the ingress renders."""

from collections.abc import Sequence
from http import HTTPStatus

from starlette.types import Send

from deployments.protocol import ErrorDetail, ErrorResponse

REQUEST_TOO_LARGE_CODE = "request_too_large"


class OpenAIError(Exception):
    """An error to return to the client as `{"error": {message, type, param, code}}`."""

    def __init__(
        self,
        message: str,
        status_code: int = HTTPStatus.BAD_REQUEST,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, status_code, type, param, code)
        self.message = message
        self.status_code = int(status_code)
        self.type = type
        self.param = param
        self.code = code

    def response_body(self) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorDetail(
                message=self.message, type=self.type, param=self.param, code=self.code
            )
        )


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(message, HTTPStatus.BAD_REQUEST, "invalid_request_error", param, code)


def request_too_large(limit: int) -> OpenAIError:
    return OpenAIError(
        f"The request body is larger than this server's limit of {limit} bytes.",
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        "invalid_request_error",
        None,
        REQUEST_TOO_LARGE_CODE,
    )


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(
        f"The model `{model}` does not exist.",
        HTTPStatus.NOT_FOUND,
        "invalid_request_error",
        "model",
        "model_not_found",
    )


def service_unavailable(message: str) -> OpenAIError:
    return OpenAIError(message, HTTPStatus.SERVICE_UNAVAILABLE, "service_unavailable_error")


def internal_error(message: str) -> OpenAIError:
    return OpenAIError(message, HTTPStatus.INTERNAL_SERVER_ERROR, "server_error")


async def send_error(
    send: Send, error: OpenAIError, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Answer with the error straight from ASGI middleware, before the app runs."""
    body = error.response_body().model_dump_json().encode()
    start_headers = [(b"content-type", b"application/json"), *headers]
    await send(
        {"type": "http.response.start", "status": error.status_code, "headers": start_headers}
    )
    await send({"type": "http.response.body", "body": body})
