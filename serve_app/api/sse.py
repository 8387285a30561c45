"""Server-sent events to a client that may go away."""

import contextlib

from fastapi.responses import StreamingResponse
from ray.exceptions import TaskCancelledError
from starlette.types import Receive

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class SSEResponse(StreamingResponse):
    """A stream of SSE events that ends quietly when its client goes away.

    Serve tells the ingress of a disconnect by cancelling the request, which surfaces as
    `TaskCancelledError` from `receive()`: that is a disconnect, not a server error.
    """

    media_type = "text/event-stream"

    def __init__(self, content: object) -> None:
        super().__init__(content, headers=SSE_HEADERS)

    async def listen_for_disconnect(self, receive: Receive) -> None:
        with contextlib.suppress(TaskCancelledError):
            await super().listen_for_disconnect(receive)
