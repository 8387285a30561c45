"""How the ingress reports failures of the hop to the LLM replicas (`LLMServerClient`)."""

import asyncio
from types import SimpleNamespace

import grpc
import pytest
from ray.serve.exceptions import BackPressureError

from serve_app.api.llm_client import LLMServerClient, _openai_errors
from serve_app.core.errors import OpenAIError


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED]
)
def test_a_grpc_failure_of_the_hop_is_a_503_that_names_its_code(code: grpc.StatusCode) -> None:
    failure = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "boom")
    with pytest.raises(OpenAIError) as raised, _openai_errors(None):
        raise failure
    assert raised.value.status_code == 503
    assert raised.value.type == "service_unavailable_error"
    assert code.name in raised.value.message


def _output(text: str) -> SimpleNamespace:
    """An output as the LLM server sends it: the prompt with the first only."""
    first = text == "a"
    return SimpleNamespace(text=text, prompt="p" if first else None, prompt_token_ids=None)


class _Response:
    """A stand-in for Serve's streaming response: yields `chunks`, then raises `error`."""

    def __init__(self, chunks: list[str], error: BaseException | None = None) -> None:
        self._chunks = iter([_output(c) for c in chunks])
        self._error, self.cancelled = error, False

    def __aiter__(self) -> "_Response":
        return self

    async def __anext__(self) -> str:
        if (chunk := next(self._chunks, None)) is not None:
            return chunk
        if self._error is not None:
            raise self._error
        raise StopAsyncIteration

    def cancel(self) -> None:
        self.cancelled = True


class _Handle:
    def __init__(self, response: _Response) -> None:
        self.generate = SimpleNamespace(remote=lambda request: response)

    def options(self, **_: object) -> "_Handle":
        return self


def _client(response: _Response) -> LLMServerClient:
    return LLMServerClient(_Handle(response), "grpc")  # type: ignore[arg-type]


async def _read(client: LLMServerClient, limit: int | None = None) -> list[str]:
    stream = client._stream(None, None)  # type: ignore[arg-type]
    chunks = []
    async for chunk in stream:
        assert chunk.prompt == "p"  # put back on every output
        chunks.append(chunk.text)
        if len(chunks) == limit:
            await stream.aclose()
            break
    return chunks


def test_a_full_queue_is_a_503_and_nothing_to_cancel() -> None:
    response = _Response([], BackPressureError(num_queued_requests=1, max_queued_requests=1))
    with pytest.raises(OpenAIError) as raised:
        asyncio.run(_read(_client(response)))
    assert (raised.value.status_code, raised.value.type) == (503, "service_unavailable_error")
    assert "capacity" in raised.value.message
    assert not response.cancelled


def test_a_consumer_that_leaves_cancels_the_request() -> None:
    response = _Response(["a", "b", "c"])
    assert asyncio.run(_read(_client(response), limit=1)) == ["a"]
    assert response.cancelled


def test_a_finished_stream_is_not_cancelled() -> None:
    response = _Response(["a", "b"])
    assert asyncio.run(_read(_client(response))) == ["a", "b"]
    assert not response.cancelled
