"""POST /v1/completions: one or more prompts, each generating `n` choices."""

import time
from collections.abc import AsyncIterator

from serve_app.api.protocol import (
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    Usage,
)
from serve_app.api.serving.base import GenerationServing
from serve_app.api.serving.generation import Generation, Timer
from serve_app.core.constants import COMPLETIONS_ROUTE, DEFAULT_COMPLETION_MAX_TOKENS
from serve_app.core.payloads import ChoiceDelta, TokenLogprob


class CompletionServing(GenerationServing):
    route = COMPLETIONS_ROUTE

    async def _generation(self, request: CompletionRequest) -> Generation:
        timer = Timer()
        self.check_model(request.model)
        info = await self._llm_server.model_info()
        prompts = await self._renderer.completion(request, info.max_model_len)
        max_tokens = request.max_tokens or DEFAULT_COMPLETION_MAX_TOKENS
        return self.new_generation("cmpl", request, info, prompts, max_tokens, "prompt", timer)

    async def complete(self, request: CompletionRequest) -> Completion:
        generation = await self._generation(request)
        results = await self.collect(generation)
        return Completion(
            id=generation.request_id,
            model=self._served_name,
            choices=[
                CompletionChoice(
                    index=index,
                    text=result.text,
                    logprobs=(
                        _completion_logprobs(result.logprobs)
                        if request.logprobs is not None
                        else None
                    ),
                    finish_reason=result.finish_reason,
                )
                for index, result in enumerate(results)
            ],
            usage=generation.usage(),
            vllm_stats=generation.timer.stats(generation.completion_tokens),
        )

    async def stream(self, request: CompletionRequest) -> AsyncIterator[str]:
        generation = await self._generation(request)
        created = int(time.time())
        offsets: dict[int, int] = {}

        def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> CompletionChunk:
            return CompletionChunk(
                id=generation.request_id,
                created=created,
                model=self._served_name,
                choices=choices,
                usage=usage,
            )

        def choice(delta: ChoiceDelta) -> CompletionChoice:
            logprobs = None
            if request.logprobs is not None:
                logprobs = _completion_logprobs(delta.logprobs or [], offsets, delta.index)
            return CompletionChoice(
                index=delta.index,
                text=delta.text,
                logprobs=logprobs,
                finish_reason=delta.finish_reason,
            )

        async for event in self.sse_events(
            generation,
            lambda deltas: chunk([choice(d) for d in deltas]),
            (lambda: chunk([], generation.usage())) if request.include_usage else None,
        ):
            yield event


def _completion_logprobs(
    tokens: list[TokenLogprob], offsets: dict[int, int] | None = None, index: int = 0
) -> CompletionLogprobs:
    """Legacy completions logprobs; `offsets` carries each choice's text offset across chunks."""
    offset = offsets.get(index, 0) if offsets is not None else 0
    result = CompletionLogprobs()
    for token in tokens:
        result.tokens.append(token.token)
        result.token_logprobs.append(token.logprob)
        result.top_logprobs.append({top.token: top.logprob for top in token.top})
        result.text_offset.append(offset)
        offset += len(token.token)
    if offsets is not None:
        offsets[index] = offset
    return result
