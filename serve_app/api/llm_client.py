"""The ingress's client of the LLM-server deployment, with the surface of vLLM's `EngineClient`
that vLLM's OpenAI serving classes use: they run in the ingress over it, and its `generate`
runs on an LLM-server replica.

Token streams go over Serve's gRPC channel between replicas by default: every output is one
gRPC message, pickled, instead of one Ray object reported through the actor-task streaming
generator, which costs 2 to 7 times more per chunk (benchmarks/serving/stream_transport.py).
Each `generate` call is a request of its own to Serve's router (`_own_routing_id`), not one of
several sharing their HTTP request's id (a batch of prompts). Every failure of the hop comes
out as an `OpenAIError`. A request that fails before its first
output because its replica failed (engine dead or stalled, actor gone) is sent again, up to
`REPLICA_RETRIES` times: nothing was generated yet, and Serve's router drops a failed replica
as soon as the controller has replaced it.
"""

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from ray.exceptions import RayActorError, RayTaskError
from ray.serve import context as serve_context
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from serve_app.api.record import RequestRecord, current_record
from serve_app.core.config import EngineTransport
from serve_app.core.errors import (
    ENGINE_FAILED_CODE,
    REPLICA_UNAVAILABLE_CODE,
    OpenAIError,
    internal_error,
    no_replica,
    service_unavailable,
)
from serve_app.core.payloads import EngineStats, ModelInfo
from serve_app.vllm_compat import (
    EngineRequest,
    RequestOutput,
    SamplingParams,
    engine_client_parts,
    engine_request,
    merge_outputs,
    new_tokens,
    sorted_choices,
    with_prompt,
)

REPLICA_RETRIES = 2
# A request whose first output has not come for this long (seconds) asks whether any LLM
# replica runs (far above a first token's time in a running service, so it costs nothing).
FIRST_OUTPUT_CHECK_S = 5.0
_REPLICA_FAILED = frozenset({ENGINE_FAILED_CODE, REPLICA_UNAVAILABLE_CODE})


async def _always() -> bool:
    return True


class LLMServerClient:
    """Calls LLMServer replicas through a Serve handle; tells `on_replica_failure` when a
    request's replica failed, and asks `replicas_running` when a first output is long due.

    `connect()` fetches the engine's vLLM config once and builds what vLLM's serving classes
    read off an engine client (`vllm_config`, `model_config`, `renderer`, `input_processor`).
    """

    errored = False  # a dead engine is the LLM server's to report (its health check)

    def __init__(
        self,
        handle: DeploymentHandle,
        transport: EngineTransport,
        on_replica_failure: Callable[[], None] = lambda: None,
        replicas_running: Callable[[], Awaitable[bool]] = _always,
    ) -> None:
        self._handle = handle
        self._on_replica_failure = on_replica_failure
        self._replicas_running = replicas_running
        # gRPC path: plain pickle, not cloudpickle (the actor path ignores these two options).
        self._stream_handle = handle.options(
            stream=True,
            _by_reference=transport == "actor",
            request_serialization="pickle",
            response_serialization="pickle",
        )
        self._info: ModelInfo | None = None
        self._info_lock = asyncio.Lock()

    async def connect(self, tokenizer: str) -> None:
        """Take the engine's config from any replica; the renderer loads `tokenizer` (a path
        or id that resolves on this node)."""
        with _openai_errors(None):
            vllm_config = await self._handle.engine_config.remote()
        vllm_config.model_config.tokenizer = tokenizer
        for name, value in engine_client_parts(vllm_config).items():
            setattr(self, name, value)

    @property
    def dead_error(self) -> OpenAIError:
        return service_unavailable("The model's engine is not running; retry shortly.")

    def check_admission(self, n: int = 1, request_id: str | None = None) -> None:
        """Admission is Serve's: beyond `max_queued_requests`, `generate` gets a 503."""

    async def is_tracing_enabled(self) -> bool:
        return False

    async def generate(
        self, prompt: Any, sampling_params: SamplingParams, request_id: str, **options: Any
    ) -> AsyncIterator[RequestOutput]:
        """`AsyncLLM.generate` on an LLM-server replica; leaving early cancels it there.

        A request that asked for the final output only gets it merged here from the deltas
        (the first one streamed early, which times the first token).
        """
        record = current_record()
        session = record.session if record is not None else None
        request = engine_request(prompt, sampling_params, request_id, options, session)
        if record is not None:
            record.started(request_id, len(prompt.get("prompt_token_ids") or ()))
        collected: RequestOutput | None = None
        async for output in self._stream(request, record):
            if record is not None:
                record.saw_tokens(new_tokens(output))
            if not request.collect:
                yield output
            else:
                collected = output if collected is None else merge_outputs(collected, output)
        if collected is not None:
            yield sorted_choices(collected)

    async def _stream(
        self, request: EngineRequest, record: RequestRecord | None
    ) -> AsyncIterator[RequestOutput]:
        for attempt in range(REPLICA_RETRIES + 1):
            with _own_routing_id():
                response = self._stream_handle.generate.remote(request)
            first: RequestOutput | None = None
            try:
                with _openai_errors(record):
                    first = await self._first_output(response)
                    if first is None:
                        return
                    yield first
                    async for output in response:
                        # The LLM server sends the prompt with the first output only.
                        yield with_prompt(output, first)
                return
            except OpenAIError as error:
                if error.code not in _REPLICA_FAILED:
                    raise
                self._on_replica_failure()
                if first is not None or attempt == REPLICA_RETRIES:
                    raise
                if record is not None:
                    record.error = None
            except (GeneratorExit, asyncio.CancelledError):  # the consumer left: abort it
                response.cancel()
                raise

    async def _first_output(self, response: Any) -> RequestOutput | None:
        """The stream's first output. While it has not come for `FIRST_OUTPUT_CHECK_S`, ask
        whether any LLM replica runs at all: Serve would keep the request queued until a
        new replica has loaded its model, minutes on a GPU; it gets a 503 instead."""
        pending = asyncio.ensure_future(anext(response))
        try:
            while not (await asyncio.wait({pending}, timeout=FIRST_OUTPUT_CHECK_S))[0]:
                if not await self._replicas_running():
                    response.cancel()
                    raise no_replica()
        finally:
            pending.cancel()
        try:
            return pending.result()
        except StopAsyncIteration:
            return None

    async def model_info(self) -> ModelInfo:
        """The engine's limits, asked once of any replica and cached."""
        if self._info is None:
            async with self._info_lock:
                if self._info is None:
                    with _openai_errors(None):
                        self._info = await self._handle.model_info.remote()
        return self._info

    async def engine_stats(self) -> EngineStats:
        """Resources of one engine replica (whichever the router picks)."""
        with _openai_errors(None):
            return await self._handle.engine_stats.remote()


@contextlib.contextmanager
def _own_routing_id() -> Iterator[None]:
    """Handle calls made within carry an internal request id of their own, not their HTTP
    request's. Serve's router (Ray 2.60) files a request waiting for a replica under that id,
    one request per id, and a router without Serve's FIFO mixin (ours) hands the replica it
    picked to the request filed under the id: of two calls of one HTTP request waiting at
    once, the second never gets one, and its routing task retries forever, holding one of
    the router's few routing tasks (in CI, every request then hung after a batch of prompts)."""
    outer = serve_context._get_serve_request_context()
    own = dataclasses.replace(outer, _internal_request_id=str(uuid.uuid4()))
    token = serve_context._serve_request_context.set(own)
    try:
        yield
    finally:
        serve_context._serve_request_context.reset(token)


@contextlib.contextmanager
def _openai_errors(record: RequestRecord | None) -> Iterator[None]:
    """Re-raise the LLM server's own `OpenAIError`s as they were; map Ray's failures; note
    the error in the request's record."""
    try:
        yield
    except Exception as exc:
        error = _as_openai_error(exc)
        if error is None:
            raise
        if record is not None:
            record.error = error
        if error is exc:
            raise
        raise error from exc


def _as_openai_error(exc: Exception) -> OpenAIError | None:
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, RayTaskError):
        if isinstance(exc.cause, OpenAIError):
            return exc.cause
        return internal_error(f"Generation failed: {type(exc.cause).__name__}")
    if isinstance(exc, BackPressureError):
        return service_unavailable("The model is at capacity; retry shortly.")
    if isinstance(exc, RayActorError | DeploymentUnavailableError):
        return service_unavailable(
            "The model replica for this request is unavailable.", REPLICA_UNAVAILABLE_CODE
        )
    if isinstance(exc, grpc.aio.AioRpcError):  # gRPC transport; Ray maps UNAVAILABLE itself
        return service_unavailable(
            f"The model replica did not answer ({exc.code().name}); retry shortly.",
            REPLICA_UNAVAILABLE_CODE,
        )
    return None
