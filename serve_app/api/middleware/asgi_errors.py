"""Answering with an OpenAI error straight from ASGI middleware, before the app runs."""

from collections.abc import Sequence

from starlette.types import Send

from serve_app.core.errors import OpenAIError


async def send_error(
    send: Send, error: OpenAIError, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Send `error` as a complete JSON response with its status and extra `headers`."""
    body = error.response_body().model_dump_json().encode()
    own = [(name.lower().encode(), value.encode()) for name, value in error.headers().items()]
    start_headers = [(b"content-type", b"application/json"), *own, *headers]
    await send(
        {"type": "http.response.start", "status": error.status_code, "headers": start_headers}
    )
    await send({"type": "http.response.body", "body": body})
