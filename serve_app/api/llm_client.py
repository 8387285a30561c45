"""The ingress's client of the LLM-server deployment: a streaming handle with errors mapped.

Token streams go over Serve's gRPC channel between replicas by default: every chunk is one
gRPC message, pickled, instead of one Ray object reported through the actor-task streaming
generator, which costs 2 to 7 times more per chunk (benchmarks/serving/stream_transport.py).
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Protocol

import grpc
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from serve_app.core.config import EngineTransport
from serve_app.core.errors import OpenAIError, internal_error, service_unavailable
from serve_app.core.payloads import EngineStats, GenerateRequest, GenerationChunk, ModelInfo


class LLMServerAPI(Protocol):
    """What the serving classes ask of the LLM server (over Serve, or in-process in tests)."""

    async def model_info(self) -> ModelInfo: ...

    async def engine_stats(self) -> EngineStats: ...

    def stream(self, request: GenerateRequest) -> AsyncIterator[GenerationChunk]: ...


class LLMServerClient:
    """Calls LLMServer replicas through a Serve handle; every failure comes out as an
    `OpenAIError`."""

    def __init__(self, handle: DeploymentHandle, transport: EngineTransport) -> None:
        self._handle = handle
        # gRPC path: our payloads are importable pydantic models, so plain pickle, not
        # cloudpickle (the actor path ignores these two options).
        self._stream_handle = handle.options(
            stream=True,
            _by_reference=transport == "actor",
            request_serialization="pickle",
            response_serialization="pickle",
        )
        self._info: ModelInfo | None = None
        self._info_lock = asyncio.Lock()

    async def model_info(self) -> ModelInfo:
        """The engine's limits, asked once of any replica and cached."""
        if self._info is None:
            async with self._info_lock:
                if self._info is None:
                    with _openai_errors():
                        self._info = await self._handle.model_info.remote()
        return self._info

    async def engine_stats(self) -> EngineStats:
        """Resources of one engine replica (whichever the router picks)."""
        with _openai_errors():
            return await self._handle.engine_stats.remote()

    async def stream(self, request: GenerateRequest) -> AsyncIterator[GenerationChunk]:
        """Yield the request's chunks; leaving early cancels the request in the engine."""
        response = self._stream_handle.generate.remote(request)
        try:
            with _openai_errors():
                async for chunk in response:
                    yield chunk
        except (GeneratorExit, asyncio.CancelledError):  # the consumer left: abort the request
            response.cancel()
            raise


@contextlib.contextmanager
def _openai_errors() -> Iterator[None]:
    """Re-raise the LLM server's own `OpenAIError`s as they were; map Ray's failures."""
    try:
        yield
    except RayTaskError as exc:
        if isinstance(exc.cause, OpenAIError):
            raise exc.cause from None
        raise internal_error(f"Generation failed: {type(exc.cause).__name__}") from exc
    except BackPressureError as exc:
        raise service_unavailable("The model is at capacity; retry shortly.") from exc
    except (RayActorError, DeploymentUnavailableError) as exc:
        raise service_unavailable("The model replica for this request is unavailable.") from exc
    except grpc.aio.AioRpcError as exc:  # gRPC transport; Ray maps UNAVAILABLE to RayActorError
        raise service_unavailable(
            f"The model replica did not answer ({exc.code().name}); retry shortly."
        ) from exc
