"""What chat and text completions share: fan-out over prompts, records, SSE framing."""

import asyncio
import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from typing import ClassVar

from pydantic import BaseModel

from serve_app.api.llm_client import LLMServerAPI
from serve_app.api.prompts import OffLoopRenderer, resolve_max_tokens
from serve_app.api.protocol import ChatCompletionRequest, CompletionRequest
from serve_app.api.serving.generation import ChoiceResult, Generation, Timer, sampling_spec
from serve_app.core.errors import OpenAIError, model_not_found, too_many_logprobs
from serve_app.core.payloads import ChoiceDelta, GenerateRequest, GenerationChunk, ModelInfo
from serve_app.observability.metrics import IngressMetrics

SSE_DONE = "data: [DONE]\n\n"

# One line per generation request: id, route, status, tokens, TTFT, time, tokens/s. With
# serve_config.yaml's `logging_config: {encoding: JSON}` the fields become JSON keys.
request_log = logging.getLogger("ray.serve")


def sse(event: BaseModel) -> str:
    return f"data: {event.model_dump_json(exclude_none=True)}\n\n"


class GenerationServing(ABC):
    """Base of the chat and completion serving classes: validation, fan-out, streaming, records."""

    route: ClassVar[str]

    def __init__(
        self,
        llm_server: LLMServerAPI,
        renderer: OffLoopRenderer,
        served_name: str,
        metrics: IngressMetrics,
    ) -> None:
        self._llm_server = llm_server
        self._renderer = renderer
        self._served_name = served_name
        self._metrics = metrics

    @abstractmethod
    async def complete(self, request: ChatCompletionRequest | CompletionRequest) -> BaseModel:
        """The whole response of a non-streamed request."""

    @abstractmethod
    def stream(self, request: ChatCompletionRequest | CompletionRequest) -> AsyncIterator[str]:
        """The SSE events of a streamed request, `[DONE]` last."""

    def check_model(self, model: str) -> None:
        if model != self._served_name:
            raise model_not_found(model)

    def new_generation(
        self,
        id_prefix: str,
        request: ChatCompletionRequest | CompletionRequest,
        info: ModelInfo,
        prompts: Sequence[list[int]],
        requested_max_tokens: int | None,
        prompt_param: str,
        timer: Timer,
    ) -> Generation:
        """Check each prompt against the engine's limits and build its engine request."""
        if request.num_logprobs is not None and request.num_logprobs > info.max_logprobs:
            raise too_many_logprobs(info.max_logprobs)
        request_id = f"{id_prefix}-{uuid.uuid4().hex}"
        engine_requests = [
            GenerateRequest(
                request_id=f"{request_id}-{i}" if len(prompts) > 1 else request_id,
                prompt_token_ids=ids,
                sampling=sampling_spec(
                    request,
                    resolve_max_tokens(
                        len(ids), requested_max_tokens, info.max_model_len, prompt_param
                    ),
                ),
            )
            for i, ids in enumerate(prompts)
        ]
        return Generation(request_id, engine_requests, timer)

    async def run(self, generation: Generation) -> AsyncIterator[list[ChoiceDelta]]:
        """Stream every prompt's choices, re-indexed as prompt_index * n + choice index.

        However it ends (done, failed, or abandoned by a client that went away), the
        generation is recorded in the metrics and the request log.
        """
        n = generation.requests[0].sampling.n
        streams = [self._llm_server.stream(r) for r in generation.requests]
        status = "aborted"
        try:
            async for prompt_index, chunk in _merge(streams):
                deltas = [
                    delta.model_copy(update={"index": prompt_index * n + delta.index})
                    if prompt_index
                    else delta
                    for delta in chunk.choices
                ]
                tokens = sum(d.num_tokens for d in deltas)
                if tokens:
                    generation.timer.saw_tokens(tokens)
                    generation.completion_tokens += tokens
                yield deltas
            status = "ok"
        except OpenAIError as exc:
            status = exc.type
            raise
        finally:
            generation.timer.end = time.perf_counter()
            self._record(generation, status)

    def _record(self, generation: Generation, status: str) -> None:
        timer = generation.timer
        self._metrics.record_generation(
            self.route,
            generation.prompt_tokens,
            generation.completion_tokens,
            timer.ttft,
            timer.token_gaps,
            aborted=status == "aborted",
        )
        stats = timer.stats(generation.completion_tokens)
        fields = {
            "request_id": generation.request_id,
            "route": self.route,
            "status": status,
            "prompt_tokens": generation.prompt_tokens,
            "max_tokens": generation.requests[0].sampling.max_tokens,
            "generated_tokens": generation.completion_tokens,
            "ttft_s": stats.time_to_first_token_seconds,
            "inference_time_s": stats.inference_time_seconds,
            "tokens_per_s": stats.tokens_per_second,
        }
        request_log.info(" ".join(f"{key}={value}" for key, value in fields.items()), extra=fields)

    async def sse_events(
        self,
        generation: Generation,
        render: Callable[[list[ChoiceDelta]], BaseModel],
        usage_event: Callable[[], BaseModel] | None,
    ) -> AsyncIterator[str]:
        """Frame a generation as SSE; an error after the first event ends the stream with it."""
        started = False
        try:
            async for deltas in self.run(generation):
                started = True
                yield sse(render(deltas))
        except OpenAIError as exc:
            if not started:
                raise
            self._metrics.record_error(self.route, exc.type)
            yield sse(exc.response_body())
        else:
            if usage_event is not None:
                yield sse(usage_event())
        yield SSE_DONE

    async def collect(self, generation: Generation) -> list[ChoiceResult]:
        """Run a generation to the end and return its choices in index order."""
        n = generation.requests[0].sampling.n
        results = [ChoiceResult() for _ in range(n * len(generation.requests))]
        async for deltas in self.run(generation):
            for delta in deltas:
                results[delta.index].add(delta)
        return results


async def _merge(
    streams: Sequence[AsyncIterator[GenerationChunk]],
) -> AsyncIterator[tuple[int, GenerationChunk]]:
    """Interleave several streams as their chunks arrive (one stream: no tasks at all)."""
    if len(streams) == 1:
        async for chunk in streams[0]:
            yield 0, chunk
        return
    queue: asyncio.Queue[tuple[int, GenerationChunk | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[GenerationChunk]) -> None:
        try:
            async for chunk in stream:
                await queue.put((index, chunk))
            await queue.put((index, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            await queue.put((index, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()


async def primed(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """Wait for the first event, so errors before it become plain HTTP errors, then stream."""
    first = await anext(events)

    async def replay() -> AsyncIterator[str]:
        yield first
        async for event in events:
            yield event

    return replay()
