"""What chat and text completions share: sampling, fan-out over prompts, timing, SSE framing."""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import BaseModel

from deployments.engine_client import EngineClient
from deployments.errors import OpenAIError, model_not_found
from deployments.generation import (
    ChoiceDelta,
    GenerateRequest,
    GenerationChunk,
    ModelInfo,
    SamplingSpec,
    TokenLogprob,
)
from deployments.metrics import IngressMetrics
from deployments.prompts import OffLoopRenderer, resolve_max_tokens
from deployments.protocol import ChatCompletionRequest, CompletionRequest, Usage, VllmStats

SSE_DONE = "data: [DONE]\n\n"

# One line per generation request: id, route, status, tokens, TTFT, time, tokens/s. With
# serve_config.yaml's `logging_config: {encoding: JSON}` the fields become JSON keys.
request_log = logging.getLogger("ray.serve")


def sse(event: BaseModel) -> str:
    return f"data: {event.model_dump_json(exclude_none=True)}\n\n"


def sampling_spec(
    request: ChatCompletionRequest | CompletionRequest, max_tokens: int
) -> SamplingSpec:
    """Engine-neutral sampling settings; OpenAI's defaults where the client sent none."""
    return SamplingSpec(
        max_tokens=max_tokens,
        n=request.n,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        seed=request.seed,
        stop=request.stop_sequences,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        logprobs=request.num_logprobs,
        top_k=request.top_k,
        min_p=request.min_p,
        repetition_penalty=request.repetition_penalty,
        min_tokens=request.min_tokens or 0,
        ignore_eos=request.ignore_eos,
    )


@dataclass
class Timer:
    """Wall-clock timings of one API request, from its arrival at the ingress."""

    start: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    last_token: float | None = None
    end: float | None = None
    token_gaps: list[tuple[float, int]] = field(default_factory=list)

    def saw_tokens(self, count: int) -> None:
        now = time.perf_counter()
        if self.last_token is None:
            self.first_token = now
        else:
            self.token_gaps.append((now - self.last_token, count))
        self.last_token = now

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start

    def stats(self, completion_tokens: int) -> VllmStats:
        end = self.end or time.perf_counter()
        elapsed = end - self.start
        return VllmStats(
            inference_time_seconds=round(elapsed, 6),
            tokens_per_second=round(completion_tokens / elapsed, 3) if elapsed > 0 else 0.0,
            time_to_first_token_seconds=None if self.ttft is None else round(self.ttft, 6),
        )


@dataclass
class ChoiceResult:
    """One choice's output accumulated over the stream (for non-streaming responses)."""

    text_parts: list[str] = field(default_factory=list)
    num_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, delta: ChoiceDelta) -> None:
        self.text_parts.append(delta.text)
        self.num_tokens += delta.num_tokens
        if delta.logprobs:
            self.logprobs.extend(delta.logprobs)
        if delta.finish_reason:
            self.finish_reason = delta.finish_reason

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


@dataclass
class Generation:
    """The engine requests of one API request, and what came back of them so far."""

    request_id: str
    requests: list[GenerateRequest]
    timer: Timer
    completion_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        return sum(len(r.prompt_token_ids) for r in self.requests)

    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
        )


class OpenAIServing:
    """Base of the chat and completion services: validation, fan-out, streaming, records."""

    route: ClassVar[str]

    def __init__(
        self,
        engine: EngineClient,
        renderer: OffLoopRenderer,
        served_name: str,
        metrics: IngressMetrics,
    ) -> None:
        self._engine = engine
        self._renderer = renderer
        self._served_name = served_name
        self._metrics = metrics

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
            raise OpenAIError(
                f"At most {info.max_logprobs} logprobs per token are served.", param="logprobs"
            )
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
        streams = [self._engine.stream(r) for r in generation.requests]
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
