"""ASGI middleware: requests by route template and status, latency, in-flight count."""

import time
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.observability.metrics import IngressMetrics


class HTTPMetricsMiddleware:
    """ASGI middleware: requests by route template and status, latency, in-flight count.

    It reads the `IngressMetrics` from `app.state.metrics` (set by the ingress replica);
    until then it only passes requests through. In-flight is counted for `tracked_paths`.
    """

    def __init__(self, app: ASGIApp, tracked_paths: Sequence[str]) -> None:
        self.app = app
        self.tracked_paths = frozenset(tracked_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics: IngressMetrics | None = getattr(scope["app"].state, "metrics", None)
        if scope["type"] != "http" or metrics is None:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        path = scope["path"]
        tracked = path in self.tracked_paths
        if tracked:
            metrics.request_started(path)
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = getattr(scope.get("route"), "path", None)
            metrics.request_finished(path, route, status, time.perf_counter() - start, tracked)
