"""CORS for browser clients, off unless the app config names `allowed_origins`.

Starlette's CORSMiddleware does the work; this wrapper builds it from
`app.state.allowed_origins`, which the ingress replica sets from its config (the app object
exists before the config is known). It runs outside the API-key check: a browser's preflight
carries no key, and an error answer needs the CORS headers for the page to read it.
"""

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

# Response headers a page may read: the request's id, OpenAI's rate-limit headers, Retry-After.
EXPOSED_HEADERS = [
    "x-request-id",
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
]


class ConfiguredCORSMiddleware:
    """Starlette's CORSMiddleware for `app.state.allowed_origins`; none: requests pass as is."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._origins: tuple[str, ...] = ()
        self._cors: ASGIApp = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origins: tuple[str, ...] = getattr(scope["app"].state, "allowed_origins", ())
        if scope["type"] != "http" or not origins:
            await self.app(scope, receive, send)
            return
        if origins != self._origins:
            self._origins = origins
            self._cors = CORSMiddleware(
                self.app,
                allow_origins=list(origins),
                allow_methods=["GET", "POST"],
                allow_headers=["*"],
                expose_headers=EXPOSED_HEADERS,
                max_age=600,
            )
        await self._cors(scope, receive, send)
