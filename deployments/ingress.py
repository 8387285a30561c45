"""The OpenAI ingress deployment: FastAPI wiring of the OpenAI routes to the services.

Request path: parse and validate (pydantic) -> render the prompt -> route to an LLM-server
replica through a streaming handle -> JSON or SSE. Every error leaves as an OpenAI error body.
"""

import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.engine_client import EngineClient
from deployments.errors import OpenAIError, internal_error, invalid_request
from deployments.health import ReplicaHealth
from deployments.prompts import PromptRenderer
from deployments.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    Health,
    ModelCard,
    ModelList,
)
from deployments.serving import primed
from deployments.serving_chat import ChatService
from deployments.serving_completion import CompletionService
from serve_app.config import AppConfig
from serve_app.constants import INGRESS_DEPLOYMENT
from serve_app.default_model import resolve_model

logger = logging.getLogger("ray.serve")

app = FastAPI(title="vLLM on Ray Serve", summary="OpenAI-compatible LLM serving")
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _error_response(error: OpenAIError) -> JSONResponse:
    return JSONResponse(error.response_body().model_dump(), status_code=error.status_code)


@app.exception_handler(OpenAIError)
async def _openai_error(_: Request, exc: OpenAIError) -> JSONResponse:
    return _error_response(exc)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return _error_response(_describe_validation_error(exc))


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    error_type = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return _error_response(OpenAIError(str(exc.detail), exc.status_code, error_type))


@app.exception_handler(Exception)
async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("Unhandled error in the ingress")
    return _error_response(internal_error(f"Internal error: {type(exc).__name__}"))


def _describe_validation_error(exc: RequestValidationError) -> OpenAIError:
    """The first problem, phrased for a client, with the offending parameter's path."""
    first = exc.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return invalid_request("The request body is not valid JSON.", None, "invalid_json")
    if first.get("type") == "extra_forbidden":
        return invalid_request(
            f"Unrecognized request argument supplied: {'.'.join(location)}", ".".join(location)
        )
    if first.get("type") == "missing" and not location:
        return invalid_request("The request body is missing.")
    param = ".".join(location) or None
    message = first.get("msg", "Invalid request")
    return invalid_request(f"{message} (parameter: {param})" if param else message, param)


@serve.deployment(name=INGRESS_DEPLOYMENT)
@serve.ingress(app)
class OpenAIIngress:
    """Speaks the OpenAI HTTP API in front of the LLM-server deployment."""

    def __init__(self, llm_server: DeploymentHandle, config: AppConfig) -> None:
        self._config = config
        self._engine = EngineClient(llm_server)
        renderer = PromptRenderer(resolve_model(config.tokenizer or config.model))
        self._chat = ChatService(self._engine, renderer, config.served_name)
        self._completions = CompletionService(self._engine, renderer, config.served_name)
        self._health = ReplicaHealth(serve.get_replica_context().app_name)
        self._created = int(time.time())

    @app.post("/v1/chat/completions", response_model=ChatCompletion)
    async def chat_completions(self, body: ChatCompletionRequest) -> Response:
        if body.stream:
            events = await primed(self._chat.stream(body))
            return StreamingResponse(events, media_type="text/event-stream", headers=_SSE_HEADERS)
        return JSONResponse((await self._chat.complete(body)).model_dump())

    @app.post("/v1/completions", response_model=Completion)
    async def completions(self, body: CompletionRequest) -> Response:
        if body.stream:
            events = await primed(self._completions.stream(body))
            return StreamingResponse(events, media_type="text/event-stream", headers=_SSE_HEADERS)
        return JSONResponse((await self._completions.complete(body)).model_dump())

    @app.get("/v1/models")
    async def models(self) -> ModelList:
        info = await self._engine.model_info()
        card = ModelCard(
            id=self._config.served_name,
            created=self._created,
            root=self._config.model,
            max_model_len=info.max_model_len,
        )
        return ModelList(data=[card])

    @app.get("/health", response_model=Health)
    async def health(self) -> JSONResponse:
        running = await self._health.running_replicas()
        body = Health(
            status="healthy" if running else "unhealthy",
            model=self._config.served_name,
            tensor_parallel_size=self._config.tensor_parallel_size,
            healthy_replicas=running,
        )
        return JSONResponse(body.model_dump(), status_code=200 if running else 503)
