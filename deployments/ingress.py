"""The OpenAI ingress deployment: the OpenAI routes, wired to the serving classes.

The FastAPI app (middleware, error rendering, SSE framing) is `serve_app.api.http_app`; each
route here validates nothing itself and holds no protocol logic.
"""

import asyncio
import time

from fastapi import Query, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.api.health import ServiceHealth
from serve_app.api.http_app import create_app, respond
from serve_app.api.llm_client import LLMServerClient
from serve_app.api.prompts import OffLoopRenderer, PromptRenderer
from serve_app.api.protocol import (
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
from serve_app.api.serving.chat import ChatServing
from serve_app.api.serving.completion import CompletionServing
from serve_app.core.config import AppConfig
from serve_app.core.constants import (
    CHAT_ROUTE,
    COMPLETIONS_ROUTE,
    DETOKENIZE_ROUTE,
    HEALTH_ROUTE,
    INGRESS_DEPLOYMENT,
    METRICS_ROUTE,
    MODELS_ROUTE,
    TOKENIZE_ROUTE,
)
from serve_app.core.default_model import resolve_model
from serve_app.observability.metrics import IngressMetrics
from serve_app.observability.node_metrics import PROMETHEUS_CONTENT_TYPE, NodeMetrics

app = create_app()


@serve.deployment(name=INGRESS_DEPLOYMENT)
@serve.ingress(app)
class OpenAIIngress:
    """Speaks the OpenAI HTTP API in front of the LLM-server deployment."""

    async def __init__(self, llm_server: DeploymentHandle, config: AppConfig) -> None:
        self._config = config
        self._llm_server = LLMServerClient(llm_server, config.engine_transport)
        self._metrics = IngressMetrics(config.served_name, config.metrics)
        app.state.metrics = self._metrics
        app.state.max_request_bytes = config.max_request_bytes
        self._gauge_refresher = asyncio.create_task(self._metrics.keep_gauges_alive())
        self._renderer = OffLoopRenderer(
            PromptRenderer(resolve_model(config.tokenizer or config.model))
        )
        parts = (self._llm_server, self._renderer, config.served_name, self._metrics)
        self._chat = ChatServing(*parts)
        self._completions = CompletionServing(*parts)
        self._health = ServiceHealth(serve.get_replica_context().app_name, config)
        self._node_metrics = NodeMetrics()
        self._created = int(time.time())

    @app.post(CHAT_ROUTE, response_model=ChatCompletion)
    async def chat_completions(self, body: ChatCompletionRequest) -> Response:
        return await respond(self._chat, body)

    @app.post(COMPLETIONS_ROUTE, response_model=Completion)
    async def completions(self, body: CompletionRequest) -> Response:
        return await respond(self._completions, body)

    @app.post(TOKENIZE_ROUTE)
    async def tokenize(self, body: TokenizeRequest) -> TokenizeResponse:
        """vLLM's extension: the token ids the engine would receive."""
        self._chat.check_model(body.model)
        if body.messages is not None:
            tokens = await self._renderer.chat(body.messages)
        else:
            tokens = await self._renderer.encode(body.prompt or "", body.add_special_tokens)
        info = await self._llm_server.model_info()
        return TokenizeResponse(tokens=tokens, count=len(tokens), max_model_len=info.max_model_len)

    @app.post(DETOKENIZE_ROUTE)
    async def detokenize(self, body: DetokenizeRequest) -> DetokenizeResponse:
        self._chat.check_model(body.model)
        return DetokenizeResponse(prompt=await self._renderer.decode(body.tokens))

    @app.get(MODELS_ROUTE)
    async def models(self) -> ModelList:
        info = await self._llm_server.model_info()
        card = ModelCard(
            id=self._config.served_name,
            created=self._created,
            root=self._config.model,
            max_model_len=info.max_model_len,
        )
        return ModelList(data=[card])

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
