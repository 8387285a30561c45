"""The OpenAI ingress deployment: the OpenAI routes, wired to vLLM's serving classes.

The FastAPI app (middleware, error rendering) is `serve_app.api.http_app`; the work behind
each route is `serve_app.api.openai_api`. Routes validate nothing themselves and hold no
protocol logic.
"""

import asyncio
from typing import Any

from fastapi import Query, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.api.health import ServiceHealth
from serve_app.api.http_app import create_app
from serve_app.api.llm_client import LLMServerClient
from serve_app.api.openai_api import OpenAIAPI
from serve_app.api.protocol import Health, MetricsSummary
from serve_app.api.rate_limits import RateLimitClient
from serve_app.core.chat_templates import resolve_chat_template
from serve_app.core.config import AppConfig, RateLimits
from serve_app.core.constants import (
    CHAT_ROUTE,
    COMPLETIONS_ROUTE,
    DETOKENIZE_ROUTE,
    DRAINING,
    HEALTH_ROUTE,
    INGRESS_DEPLOYMENT,
    METRICS_ROUTE,
    MODEL_ROUTE,
    MODELS_ROUTE,
    RESPONSES_ROUTE,
    TOKENIZE_ROUTE,
)
from serve_app.core.default_model import resolve_model
from serve_app.observability.metrics import IngressMetrics
from serve_app.observability.node_metrics import PROMETHEUS_CONTENT_TYPE, NodeMetrics
from serve_app.vllm_compat import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    OpenAISettings,
    ResponsesRequest,
    ResponsesResponse,
    TokenizeRequest,
)

app = create_app()


@serve.deployment(name=INGRESS_DEPLOYMENT)
@serve.ingress(app)
class OpenAIIngress:
    """Speaks the OpenAI HTTP API in front of the LLM-server deployment."""

    async def __init__(
        self, llm_server: DeploymentHandle, rate_limiter: DeploymentHandle, config: AppConfig
    ) -> None:
        self._config = config
        self._rate_limits = RateLimitClient(rate_limiter, config.rate_limits)
        self._health = ServiceHealth(serve.get_replica_context().app_name, config)
        self._llm_server = LLMServerClient(
            llm_server,
            config.engine_transport,
            self._health.replica_failed,
            self._health.any_running,
        )
        self._metrics = IngressMetrics(config.served_name, config.metrics)
        app.state.metrics = self._metrics
        app.state.max_request_bytes = config.max_request_bytes
        app.state.allowed_origins = config.allowed_origins
        self._gauge_refresher = asyncio.create_task(self._metrics.keep_gauges_alive())
        settings = OpenAISettings(
            served_name=config.served_name,
            model_path=config.model,
            chat_template=resolve_chat_template(config.chat_template),
            tool_call_parser=config.tool_call_parser,
            enable_auto_tool_choice=config.enable_auto_tool_choice,
            reasoning_parser=config.reasoning_parser,
        )
        tokenizer = resolve_model(config.tokenizer or config.model)
        self._api = OpenAIAPI(
            self._llm_server,
            settings,
            tokenizer,
            self._metrics,
            self._rate_limits,
            config.routing.session_header,
        )
        self._node_metrics = NodeMetrics()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply Serve's `user_config`: rate limits (the keys it names override the app's),
        and `draining`, which the runner sets before it stops the app."""
        settings = dict(user_config)
        self._health.drain(bool(settings.pop(DRAINING, False)))
        limits = self._config.rate_limits.model_dump() | settings
        self._rate_limits.configure(RateLimits.model_validate(limits))

    @app.post(CHAT_ROUTE, response_model=ChatCompletionResponse)
    async def chat_completions(self, body: ChatCompletionRequest, request: Request) -> Response:
        await self._health.require_replica()
        return await self._api.chat(body, request)

    @app.post(COMPLETIONS_ROUTE, response_model=CompletionResponse)
    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        await self._health.require_replica()
        return await self._api.completion(body, request)

    @app.post(RESPONSES_ROUTE, response_model=ResponsesResponse)
    async def responses(self, body: ResponsesRequest, request: Request) -> Response:
        await self._health.require_replica()
        return await self._api.responses(body, request)

    @app.post(TOKENIZE_ROUTE)
    async def tokenize(self, body: TokenizeRequest, request: Request) -> Response:
        """vLLM's extension: the token ids the engine would receive."""
        return await self._api.tokenize(body, request)

    @app.post(DETOKENIZE_ROUTE)
    async def detokenize(self, body: DetokenizeRequest, request: Request) -> Response:
        return await self._api.detokenize(body, request)

    @app.get(MODELS_ROUTE)
    async def models(self) -> JSONResponse:
        return JSONResponse(await self._api.models())

    @app.get(MODEL_ROUTE)
    async def model(self, model_id: str) -> JSONResponse:
        return JSONResponse(await self._api.model(model_id))

    @app.get(HEALTH_ROUTE, response_model=Health)
    async def health(self) -> JSONResponse:
        return await self._health.response()

    @app.get(METRICS_ROUTE, response_model=MetricsSummary)
    async def metrics(self, request: Request, format: str | None = Query(None)) -> Response:
        """Prometheus text of the whole app; JSON summary with Accept: application/json."""
        wants_json = format == "json" or "application/json" in request.headers.get("accept", "")
        if not wants_json:
            text = await self._node_metrics.text()
            return Response(text, media_type=PROMETHEUS_CONTENT_TYPE)
        stats = await self._llm_server.engine_stats()
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
