"""The OpenAI ingress deployment: FastAPI wiring of the OpenAI routes to the services.

Request path: count (HTTPMetricsMiddleware) -> authenticate (APIKeyMiddleware, when API_KEYS
is set) -> cap the body (BodyLimitMiddleware) -> parse and validate (pydantic) -> render the
prompt -> route to an LLM-server replica through a streaming handle -> JSON or SSE. Every
error leaves as an OpenAI error body.
"""

import asyncio
import contextlib
import logging
import time

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import TaskCancelledError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive

from deployments.auth import APIKeyMiddleware, keys_from_env
from deployments.body_limit import BodyLimitMiddleware
from deployments.engine_client import EngineClient
from deployments.errors import (
    REQUEST_TOO_LARGE_CODE,
    OpenAIError,
    internal_error,
    invalid_request,
)
from deployments.health import ReplicaHealth
from deployments.metrics import UNMATCHED_ROUTE, HTTPMetricsMiddleware, IngressMetrics
from deployments.prometheus import PROMETHEUS_CONTENT_TYPE, NodeMetrics
from deployments.prompts import OffLoopRenderer, PromptRenderer
from deployments.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    Health,
    MetricsSummary,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)
from deployments.serving import primed
from deployments.serving_chat import ChatService
from deployments.serving_completion import CompletionService
from serve_app.config import AppConfig
from serve_app.constants import (
    CHAT_ROUTE,
    COMPLETIONS_ROUTE,
    DETOKENIZE_ROUTE,
    HEALTH_ROUTE,
    INGRESS_DEPLOYMENT,
    METRICS_ROUTE,
    MODELS_ROUTE,
    TOKENIZE_ROUTE,
)
from serve_app.default_model import resolve_model

logger = logging.getLogger("ray.serve")

app = FastAPI(title="vLLM on Ray Serve", summary="OpenAI-compatible LLM serving")
# The last added runs first: count every request, check its key, then its size.
app.add_middleware(BodyLimitMiddleware)
app.add_middleware(APIKeyMiddleware, keys=keys_from_env())
app.add_middleware(HTTPMetricsMiddleware, tracked_paths=(CHAT_ROUTE, COMPLETIONS_ROUTE))
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class SSEResponse(StreamingResponse):
    """A stream that ends quietly when its client goes away.

    Serve tells the ingress of a disconnect by cancelling the request, which surfaces as
    `TaskCancelledError` from `receive()`: that is a disconnect, not a server error.
    """

    media_type = "text/event-stream"

    async def listen_for_disconnect(self, receive: Receive) -> None:
        with contextlib.suppress(TaskCancelledError):
            await super().listen_for_disconnect(receive)


def _error_response(request: Request, error: OpenAIError) -> JSONResponse:
    metrics: IngressMetrics | None = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        route = getattr(request.scope.get("route"), "path", UNMATCHED_ROUTE)
        metrics.record_error(route, error.type)
    return JSONResponse(error.response_body().model_dump(), status_code=error.status_code)


@app.exception_handler(OpenAIError)
async def _openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
    return _error_response(request, exc)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _error_response(request, _describe_validation_error(exc))


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    error_type = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    code = REQUEST_TOO_LARGE_CODE if exc.status_code == 413 else None
    error = OpenAIError(str(exc.detail), exc.status_code, error_type, code=code)
    return _error_response(request, error)


@app.exception_handler(Exception)
async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("Unhandled error in the ingress")
    return _error_response(request, internal_error(f"Internal error: {type(exc).__name__}"))


def _describe_validation_error(exc: RequestValidationError) -> OpenAIError:
    """The first problem, phrased for a client, with the offending parameter's path."""
    first = exc.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    if first.get("type") == "json_invalid":
        return invalid_request("The request body is not valid JSON.", None, "invalid_json")
    if first.get("type") == "extra_forbidden":
        return invalid_request(f"Unrecognized request argument supplied: {param}", param)
    if first.get("type") == "missing" and not location:
        return invalid_request("The request body is missing.", None, "invalid_json")
    message = first.get("msg", "Invalid request")
    return invalid_request(f"{message} (parameter: {param})" if param else message, param)


async def _respond(
    service: ChatService | CompletionService, body: ChatCompletionRequest | CompletionRequest
) -> Response:
    """SSE when the client asked to stream (once the first event is ready), else JSON."""
    if body.stream:
        events = await primed(service.stream(body))
        return SSEResponse(events, headers=_SSE_HEADERS)
    completion = await service.complete(body)
    return Response(completion.model_dump_json(), media_type="application/json")


@serve.deployment(name=INGRESS_DEPLOYMENT)
@serve.ingress(app)
class OpenAIIngress:
    """Speaks the OpenAI HTTP API in front of the LLM-server deployment."""

    async def __init__(self, llm_server: DeploymentHandle, config: AppConfig) -> None:
        self._config = config
        self._engine = EngineClient(llm_server, config.engine_transport)
        self._metrics = IngressMetrics(config.served_name, config.metrics)
        app.state.metrics = self._metrics
        app.state.max_request_bytes = config.max_request_bytes
        self._gauge_refresher = asyncio.create_task(self._metrics.keep_gauges_alive())
        self._renderer = OffLoopRenderer(
            PromptRenderer(resolve_model(config.tokenizer or config.model))
        )
        services = (self._engine, self._renderer, config.served_name, self._metrics)
        self._chat = ChatService(*services)
        self._completions = CompletionService(*services)
        self._health = ReplicaHealth(serve.get_replica_context().app_name)
        self._node_metrics = NodeMetrics()
        self._created = int(time.time())

    @app.post(CHAT_ROUTE, response_model=ChatCompletion)
    async def chat_completions(self, body: ChatCompletionRequest) -> Response:
        return await _respond(self._chat, body)

    @app.post(COMPLETIONS_ROUTE, response_model=Completion)
    async def completions(self, body: CompletionRequest) -> Response:
        return await _respond(self._completions, body)

    @app.post(TOKENIZE_ROUTE)
    async def tokenize(self, body: TokenizeRequest) -> TokenizeResponse:
        """vLLM's extension: the token ids the engine would receive."""
        self._chat.check_model(body.model)
        if body.messages is not None:
            tokens = await self._renderer.chat(body.messages)
        else:
            tokens = await self._renderer.encode(body.prompt or "", body.add_special_tokens)
        info = await self._engine.model_info()
        return TokenizeResponse(tokens=tokens, count=len(tokens), max_model_len=info.max_model_len)

    @app.post(DETOKENIZE_ROUTE)
    async def detokenize(self, body: DetokenizeRequest) -> DetokenizeResponse:
        self._chat.check_model(body.model)
        return DetokenizeResponse(prompt=await self._renderer.decode(body.tokens))

    @app.get(MODELS_ROUTE)
    async def models(self) -> ModelList:
        info = await self._engine.model_info()
        card = ModelCard(
            id=self._config.served_name,
            created=self._created,
            root=self._config.model,
            max_model_len=info.max_model_len,
        )
        return ModelList(data=[card])

    @app.get(HEALTH_ROUTE, response_model=Health)
    async def health(self) -> JSONResponse:
        running = await self._health.running_replicas()
        body = Health(
            status="healthy" if running else "unhealthy",
            model=self._config.served_name,
            tensor_parallel_size=self._config.tensor_parallel_size,
            healthy_replicas=running,
        )
        return JSONResponse(body.model_dump(), status_code=200 if running else 503)

    @app.get(METRICS_ROUTE, response_model=MetricsSummary)
    async def metrics(self, request: Request, format: str | None = Query(None)) -> Response:
        """Prometheus text of the whole app; JSON summary with Accept: application/json."""
        wants_json = format == "json" or "application/json" in request.headers.get("accept", "")
        if not wants_json:
            text = await self._node_metrics.text()
            return Response(text, media_type=PROMETHEUS_CONTENT_TYPE)
        stats = await self._engine.engine_stats()
        summary = MetricsSummary(
            model=self._config.served_name,
            tensor_parallel_size=self._config.tensor_parallel_size,
            gpu_memory_allocated_gb=stats.gpu_memory_allocated_gb,
            gpu_memory_reserved_gb=stats.gpu_memory_reserved_gb,
            gpu_name=stats.gpu_name,
            accelerator=stats.accelerator,
            cpu_kvcache_gib=stats.cpu_kvcache_gib,
            kv_cache_tokens=stats.kv_cache_tokens,
            max_model_len=stats.max_model_len,
            healthy_replicas=await self._health.running_replicas(),
            in_flight=sum(self._metrics.in_flight_by_route.values()),
            totals=dict(self._metrics.totals),
        )
        return JSONResponse(summary.model_dump())
