"""API keys: with `API_KEYS` set (comma-separated) in the environment Ray starts in, every
route but /health needs `Authorization: Bearer <key>`.

The keys are read from the ingress replica's own environment, so they never travel in
serve_config.yaml or in the application's arguments.
"""

import hmac
import os
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from serve_app.api.middleware.asgi_errors import send_error
from serve_app.core.constants import ENV_API_KEYS, HEALTH_ROUTE
from serve_app.core.errors import invalid_api_key


def keys_from_env() -> tuple[str, ...]:
    return tuple(key.strip() for key in os.environ.get(ENV_API_KEYS, "").split(",") if key.strip())


class APIKeyMiddleware:
    """Refuse requests without a valid bearer key with OpenAI's 401 error body."""

    def __init__(
        self, app: ASGIApp, keys: Sequence[str], open_paths: Sequence[str] = (HEALTH_ROUTE,)
    ) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        if self._authorized(scope):
            await self.app(scope, receive, send)
            return
        await send_error(send, invalid_api_key(), [(b"www-authenticate", b"Bearer")])

    def _authorized(self, scope: Scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return False
        return any(hmac.compare_digest(token.strip(), key) for key in self.keys)
