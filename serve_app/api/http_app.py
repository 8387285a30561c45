"""The ingress's FastAPI app: its middleware, error rendering and response framing.

Request path: CORS (ConfiguredCORSMiddleware, when `allowed_origins` is set) -> count
(HTTPMetricsMiddleware) -> authenticate (APIKeyMiddleware, when API_KEYS
is set) -> cap the body (BodyLimitMiddleware) -> parse and validate (vLLM's request models)
-> the route. Every error leaves as an OpenAI error body. The routes themselves are the
ingress deployment's methods (`deployments/ingress.py`).
"""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.api.middleware.auth import APIKeyMiddleware, keys_from_env
from serve_app.api.middleware.body_limit import BodyLimitMiddleware
from serve_app.api.middleware.cors import ConfiguredCORSMiddleware
from serve_app.api.middleware.http_metrics import HTTPMetricsMiddleware
from serve_app.core.constants import GENERATION_ROUTES
from serve_app.core.errors import (
    OpenAIError,
    from_http_status,
    from_status,
    from_validation_errors,
    internal_error,
    invalid_json,
)
from serve_app.observability.metrics import UNMATCHED_ROUTE, IngressMetrics
from serve_app.vllm_compat import REQUEST_MODEL_ERROR, error_fields
from serve_app.vllm_compat import error_response as vllm_error_response

logger = logging.getLogger("ray.serve")


def create_app() -> FastAPI:
    """The app with its middleware and error handlers; the ingress adds the routes.

    The middleware read the ingress replica's settings from `app.state` (`metrics`,
    `max_request_bytes`, `allowed_origins`) and pass requests through until it sets them.
    """
    app = FastAPI(title="vLLM on Ray Serve", summary="OpenAI-compatible LLM serving")
    # The last added runs first: answer CORS, count every request, check its key, its size.
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(APIKeyMiddleware, keys=keys_from_env())
    app.add_middleware(HTTPMetricsMiddleware, tracked_paths=GENERATION_ROUTES)
    app.add_middleware(ConfiguredCORSMiddleware)

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, from_validation_errors(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, ValueError | RecursionError):
            # FastAPI's 400 for a JSON body its decoder failed on other than as a syntax error:
            # not UTF-8, nested past Python's recursion limit, an integer of over 4300 digits.
            return error_response(request, invalid_json())
        return error_response(request, from_http_status(exc.status_code, str(exc.detail)))

    @app.exception_handler(REQUEST_MODEL_ERROR)
    async def _request_model_error(request: Request, exc: Exception) -> JSONResponse:
        # A check of vLLM's request models, answered as vLLM answers it. Handled here, inside
        # the middleware, not as an unexpected error: the metrics count its 4xx, not a 500,
        # and Serve does not log it as a failed request.
        return error_response(request, from_status(*error_fields(vllm_error_response(exc))))

    @app.exception_handler(Exception)
    async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("Unhandled error in the ingress")
        return error_response(request, internal_error(f"Internal error: {type(exc).__name__}"))

    return app


def error_response(request: Request, error: OpenAIError) -> JSONResponse:
    """The error as a JSON response, counted by route and type."""
    metrics: IngressMetrics | None = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        route = getattr(request.scope.get("route"), "path", UNMATCHED_ROUTE)
        metrics.record_error(route, error.type)
    return JSONResponse(
        error.response_body().model_dump(), status_code=error.status_code, headers=error.headers()
    )
