"""The OpenAI endpoints' work: vLLM's own serving classes, with this service's additions.

vLLM's `OpenAIServingChat`, `OpenAIServingCompletion`, `OpenAIServingResponses`,
`OpenAIServingModels` and `ServingTokenization` run here, in the ingress, over
`LLMServerClient` (whose `generate` runs on an LLM-server replica): every field, tool and
reasoning parser, structured output and response shape is vLLM's. Added around them:

- a prompt too long for the context is refused before vLLM renders it (`prompts.py`);
- errors are OpenAI's shape and types (`invalid_request_error`...), with the LLM server's
  own error kept when it ends a stream, and an error before a stream's first event answered
  as a plain HTTP error (a 503 a client can retry, not a 200 that fails);
- non-streamed chat and completion responses carry `vllm_stats`;
- every generation is recorded in the metrics and the request log (`record.py`).
"""

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from serve_app.api.llm_client import LLMServerClient
from serve_app.api.prompts import OversizeGuard, request_texts
from serve_app.api.rate_limits import RateLimitClient, requested_tokens
from serve_app.api.record import RequestRecord, open_record
from serve_app.api.sse import SSEResponse
from serve_app.core.constants import CHAT_ROUTE, COMPLETIONS_ROUTE, RESPONSES_ROUTE
from serve_app.core.errors import OpenAIError, from_status, invalid_request, model_not_found
from serve_app.observability.metrics import IngressMetrics
from serve_app.vllm_compat import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    ErrorResponse,
    OpenAIServing,
    OpenAISettings,
    ResponsesRequest,
    TokenizeRequest,
    build_openai_serving,
    error_fields,
    error_response,
)

_ERROR_EVENT = 'data: {"error"'
_DONE_EVENT = "data: [DONE]\n\n"
# What a malformed input makes vLLM's serving classes raise before the engine sees it.
_MALFORMED = (IndexError, KeyError, TypeError, AttributeError)


class OpenAIAPI:
    """The work behind each OpenAI route of the ingress."""

    def __init__(
        self,
        llm_server: LLMServerClient,
        settings: OpenAISettings,
        tokenizer: str,
        metrics: IngressMetrics,
        rate_limits: RateLimitClient,
        session_header: str,
    ) -> None:
        self._llm_server = llm_server
        self._session_header = session_header
        self._settings = settings
        self._tokenizer = tokenizer
        self._metrics = metrics
        self._rate_limits = rate_limits
        self._starting = asyncio.create_task(self._start())

    async def _start(self) -> tuple[OpenAIServing, OversizeGuard]:
        await self._llm_server.connect(self._tokenizer)
        serving = build_openai_serving(self._llm_server, self._settings)
        guard = OversizeGuard(
            self._llm_server.renderer.get_tokenizer(),
            self._llm_server.model_config.max_model_len,
        )
        return serving, guard

    async def _serving(self) -> tuple[OpenAIServing, OversizeGuard]:
        """vLLM's serving objects, built once the LLM server could be asked for its config
        (retried by the next request if that failed)."""
        if self._starting.done() and self._starting.exception() is not None:
            self._starting = asyncio.create_task(self._start())
        return await asyncio.shield(self._starting)

    # ---- generation ------------------------------------------------------------------------

    async def chat(self, request: ChatCompletionRequest, raw: Request) -> Response:
        return await self._generate(
            CHAT_ROUTE,
            request,
            raw,
            lambda serving: serving.chat.create_chat_completion(request, raw),
        )

    async def completion(self, request: CompletionRequest, raw: Request) -> Response:
        return await self._generate(
            COMPLETIONS_ROUTE,
            request,
            raw,
            lambda serving: serving.completion.create_completion(request, raw),
        )

    async def responses(self, request: ResponsesRequest, raw: Request) -> Response:
        return await self._generate(
            RESPONSES_ROUTE,
            request,
            raw,
            lambda serving: serving.responses.create_responses(request, raw),
        )

    async def _generate(
        self,
        route: str,
        request: Any,
        raw: Request,
        create: Callable[[OpenAIServing], Awaitable[Any]],
    ) -> Response:
        """Refuse a prompt too long to fit unread, admit the request under its client's rate
        limits, then ask vLLM's serving class for the response, recorded under `route`."""
        serving, guard = await self._serving()
        texts, param = request_texts(request)
        guard.check(texts, param)
        max_model_len = self._llm_server.model_config.max_model_len
        admission = await self._rate_limits.admit(
            raw, requested_tokens(request, texts, max_model_len)
        )
        record = open_record(route, self._session(raw, request))
        if admission is not None:
            record.on_finish = lambda done: self._rate_limits.settle(admission, done.used_tokens)
        result = await self._call(record, create(serving))
        response = await self._respond(record, result)
        if admission is not None:
            response.headers.update(admission.headers)
        return response

    def _session(self, raw: Request, request: Any) -> str | None:
        """The conversation the request belongs to: the session header, else the `user`."""
        return raw.headers.get(self._session_header) or getattr(request, "user", None)

    async def _call(self, record: RequestRecord, call: Awaitable[Any]) -> Any:
        """The serving class's answer; what it raised or answered as an error, an OpenAIError."""
        try:
            result = await call
        except OpenAIError as exc:
            record.finish(self._metrics, exc.type)
            raise
        except _MALFORMED as exc:
            if record.request_ids:  # it reached the engine: not the request's shape
                raise
            # vLLM's serving classes read some inputs as if well formed (an assistant
            # message with an empty content list: IndexError): the request is at fault.
            error = invalid_request(f"The request could not be processed: {exc}.")
            record.finish(self._metrics, error.type)
            raise error from exc
        except Exception as exc:  # what vLLM's own server renders through its handlers
            error = self._mapped(error_response(exc), record)
            record.finish(self._metrics, error.type)
            raise error from exc
        if isinstance(result, ErrorResponse):
            error = self._mapped(result, record)
            record.finish(self._metrics, error.type)
            raise error
        return result

    async def _respond(self, record: RequestRecord, result: Any) -> Response:
        if isinstance(result, BaseModel):
            record.finish(self._metrics, "ok")
            body = result.model_dump()
            if record.route != RESPONSES_ROUTE:  # chat and completions: the guide's block
                body["vllm_stats"] = record.stats().model_dump()
            return JSONResponse(body)
        if record.route == RESPONSES_ROUTE:
            events = self._response_events(record, result)
        else:
            events = self._sse(record, result)
        first = await anext(events)  # an error before the first event is a plain HTTP error
        return SSEResponse(_replay(first, events))

    async def _sse(self, record: RequestRecord, stream: AsyncIterator[str]) -> AsyncIterator[str]:
        """vLLM's SSE events, with error events in OpenAI's shape; records the request."""
        status, started = "aborted", False
        try:
            async for event in stream:
                if event.startswith(_ERROR_EVENT):
                    error = self._mapped_event(event, record)
                    status = error.type
                    if not started:
                        raise error
                    self._metrics.record_error(record.route, error.type)
                    event = f"data: {error.response_body().model_dump_json()}\n\n"
                elif event == _DONE_EVENT:
                    status = "ok" if status == "aborted" else status
                else:
                    started = True
                yield event
        finally:
            await stream.aclose()
            record.finish(self._metrics, status)

    async def _response_events(
        self, record: RequestRecord, stream: AsyncIterator[Any]
    ) -> AsyncIterator[str]:
        """Responses API events framed as vLLM's router frames them (`event:` then `data:`);
        an error vLLM does not turn into an event itself becomes an `error` event."""
        status, sequence = "aborted", 0
        try:
            async for event in stream:
                sequence = getattr(event, "sequence_number", sequence) + 1
                data = event.model_dump_json(indent=None, by_alias=True)
                yield f"event: {getattr(event, 'type', 'unknown')}\ndata: {data}\n\n"
            status = "ok"
        except Exception as exc:
            error = (
                exc if isinstance(exc, OpenAIError) else self._mapped(error_response(exc), record)
            )
            status = error.type
            self._metrics.record_error(record.route, error.type)
            data = {
                "type": "error",
                "code": error.code,
                "message": error.message,
                "param": error.param,
                "sequence_number": sequence,
            }
            yield f"event: error\ndata: {json.dumps(data)}\n\n"
        finally:
            await stream.aclose()
            record.finish(self._metrics, status)

    @staticmethod
    def _mapped(error: ErrorResponse, record: RequestRecord) -> OpenAIError:
        """Ours when the LLM server raised it for this request, else vLLM's, in our shape."""
        if record.error is not None:
            return record.error
        return from_status(*error_fields(error))

    @staticmethod
    def _mapped_event(event: str, record: RequestRecord) -> OpenAIError:
        if record.error is not None:
            return record.error
        error = json.loads(event.removeprefix("data: "))["error"]
        return from_status(int(error.get("code") or 500), str(error["message"]), error.get("param"))

    # ---- models and tokenization -----------------------------------------------------------

    async def models(self) -> dict[str, Any]:
        serving, _ = await self._serving()
        return (await serving.models.show_available_models()).model_dump()

    async def model(self, model_id: str) -> dict[str, Any]:
        for card in (await self.models())["data"]:
            if card["id"] == model_id:
                return card
        raise model_not_found(model_id)

    async def tokenize(self, request: TokenizeRequest, raw: Request) -> Response:
        serving, _ = await self._serving()
        return await self._plain(serving.tokenization.create_tokenize, request, raw)

    async def detokenize(self, request: DetokenizeRequest, raw: Request) -> Response:
        serving, _ = await self._serving()
        return await self._plain(serving.tokenization.create_detokenize, request, raw)

    async def _plain(
        self, create: Callable[[Any, Request], Awaitable[Any]], request: Any, raw: Request
    ) -> Response:
        try:
            result = await create(request, raw)
        except OpenAIError:
            raise
        except Exception as exc:
            raise from_status(*error_fields(error_response(exc))) from exc
        if isinstance(result, ErrorResponse):
            raise from_status(*error_fields(result))
        return JSONResponse(result.model_dump())


async def _replay(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    async for event in rest:
        yield event
