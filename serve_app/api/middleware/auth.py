"""API keys: with `API_KEYS` set (comma-separated) in the environment Ray starts in, every
route but /health needs `Authorization: Bearer <key>`.

An entry is `key` or `name:key`; the name (for an unnamed key, `key-` and 8 hex digits of its
SHA-256) is what rate limits and their per-key overrides know the client by, left in the
request's state as `api_key_name`. The keys are read from the ingress replica's own
environment, so they never travel in serve_config.yaml or in the application's arguments.
"""

import hashlib
import hmac
import os
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from serve_app.api.middleware.asgi_errors import send_error
from serve_app.core.constants import ENV_API_KEYS, HEALTH_ROUTE
from serve_app.core.errors import invalid_api_key

API_KEY_NAME = "api_key_name"


def keys_from_env() -> tuple[str, ...]:
    return tuple(key.strip() for key in os.environ.get(ENV_API_KEYS, "").split(",") if key.strip())


def named_key(entry: str) -> tuple[str, bytes]:
    """(name, key) of an `API_KEYS` entry."""
    name, _, key = entry.rpartition(":")
    key = key.strip()
    return name.strip() or f"key-{hashlib.sha256(key.encode()).hexdigest()[:8]}", key.encode()


class APIKeyMiddleware:
    """Refuse requests without a valid bearer key with OpenAI's 401 error body; name the
    client of the others in the request's state."""

    def __init__(
        self, app: ASGIApp, keys: Sequence[str], open_paths: Sequence[str] = (HEALTH_ROUTE,)
    ) -> None:
        self.app = app
        self.keys = [named_key(entry) for entry in keys]
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        name = self._key_name(scope)
        if name is None:
            await send_error(send, invalid_api_key(), [(b"www-authenticate", b"Bearer")])
            return
        scope.setdefault("state", {})[API_KEY_NAME] = name
        await self.app(scope, receive, send)

    def _key_name(self, scope: Scope) -> str | None:
        """The name of the request's valid key, else None."""
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return None
        matches = [name for name, key in self.keys if hmac.compare_digest(token.strip(), key)]
        return matches[0] if matches else None
