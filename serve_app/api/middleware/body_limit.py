"""A cap on request bodies: larger ones get OpenAI's error body with 413, unread.

The limit (`max_request_bytes` of the app config) is read from `app.state.max_request_bytes`,
set by the ingress replica; until then requests pass through. A body that declares its
length is refused before a byte of it reaches the app (the server drains it, so the client
reads the 413 rather than a reset); a chunked one when it passes the limit.
"""

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.api.middleware.asgi_errors import send_error
from serve_app.core.errors import request_too_large


class BodyLimitMiddleware:
    """Refuse request bodies over `app.state.max_request_bytes` with 413."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit: int | None = getattr(scope["app"].state, "max_request_bytes", None)
        if scope["type"] != "http" or limit is None:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await send_error(send, request_too_large(limit))
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI re-raises HTTPExceptions from body parsing; the ingress's
                    # handler renders them as OpenAI errors.
                    error = request_too_large(limit)
                    raise HTTPException(error.status_code, error.message)
            return message

        await self.app(scope, counted, send)
