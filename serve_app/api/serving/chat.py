"""POST /v1/chat/completions: chat template, then one streamed or collected generation."""

import time
from collections.abc import AsyncIterator

from serve_app.api.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatLogprobs,
    ChatTokenLogprob,
    ChatTopLogprob,
    Usage,
)
from serve_app.api.serving.base import GenerationServing
from serve_app.api.serving.generation import Generation, Timer
from serve_app.core.constants import CHAT_ROUTE
from serve_app.core.payloads import ChoiceDelta, TokenLogprob


class ChatServing(GenerationServing):
    route = CHAT_ROUTE

    async def _generation(self, request: ChatCompletionRequest) -> Generation:
        timer = Timer()
        self.check_model(request.model)
        info = await self._llm_server.model_info()
        prompt = await self._renderer.chat(request.messages, info.max_model_len)
        return self.new_generation(
            "chatcmpl", request, info, [prompt], request.requested_max_tokens, "messages", timer
        )

    async def complete(self, request: ChatCompletionRequest) -> ChatCompletion:
        generation = await self._generation(request)
        results = await self.collect(generation)
        return ChatCompletion(
            id=generation.request_id,
            model=self._served_name,
            choices=[
                ChatChoice(
                    index=index,
                    message=AssistantMessage(content=result.text),
                    logprobs=_chat_logprobs(result.logprobs) if request.logprobs else None,
                    finish_reason=result.finish_reason,
                )
                for index, result in enumerate(results)
            ],
            usage=generation.usage(),
            vllm_stats=generation.timer.stats(generation.completion_tokens),
        )

    async def stream(self, request: ChatCompletionRequest) -> AsyncIterator[str]:
        """SSE events: each choice opens with the assistant role, then content deltas."""
        generation = await self._generation(request)
        created = int(time.time())
        opened: set[int] = set()

        def chunk(
            choices: list[ChatChunkChoice], usage: Usage | None = None
        ) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=generation.request_id,
                created=created,
                model=self._served_name,
                choices=choices,
                usage=usage,
            )

        async for event in self.sse_events(
            generation,
            lambda deltas: chunk([_chunk_choice(d, opened, request.logprobs) for d in deltas]),
            (lambda: chunk([], generation.usage())) if request.include_usage else None,
        ):
            yield event


def _chunk_choice(delta: ChoiceDelta, opened: set[int], logprobs: bool) -> ChatChunkChoice:
    role = None
    if delta.index not in opened:
        opened.add(delta.index)
        role = "assistant"
    return ChatChunkChoice(
        index=delta.index,
        delta=ChatDelta(role=role, content=delta.text),
        logprobs=_chat_logprobs(delta.logprobs or []) if logprobs else None,
        finish_reason=delta.finish_reason,
    )


def _chat_logprobs(tokens: list[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=t.token,
                logprob=t.logprob,
                bytes=list(t.token.encode()),
                top_logprobs=[
                    ChatTopLogprob(
                        token=top.token, logprob=top.logprob, bytes=list(top.token.encode())
                    )
                    for top in t.top
                ],
            )
            for t in tokens
        ]
    )
