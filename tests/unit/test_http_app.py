"""The ingress app's error rendering: bodies that are no JSON object, and vLLM's own checks."""

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from serve_app.api.http_app import create_app
from serve_app.vllm_compat import ChatCompletionRequest


class Body(BaseModel):
    prompt: str


class Statuses:
    """Stands in for the replica's IngressMetrics: the status each request finished with."""

    def __init__(self) -> None:
        self.finished: list[int] = []

    def request_started(self, route: str) -> None:
        pass

    def request_finished(
        self, path: str, route: str | None, status: int, seconds: float, tracked: bool
    ) -> None:
        self.finished.append(status)

    def record_error(self, route: str, error_type: str) -> None:
        pass


def client(metrics: Statuses | None = None) -> TestClient:
    """The app with an echo route and a chat route; an exception that escapes the app (a
    server error) is raised in the test."""
    app = create_app()
    app.state.metrics = metrics

    @app.post("/echo")
    async def echo(body: Body) -> dict:
        return body.model_dump()

    @app.post("/chat")
    async def chat(body: ChatCompletionRequest) -> dict:
        return {}

    return TestClient(app)


@pytest.mark.parametrize(
    "content",
    [
        b'{"prompt": "\xff\xfe"}',
        b'{"prompt": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        b'{"prompt": ' + b"9" * 5000 + b"}",
    ],
    ids=["not-utf8", "nested-10000-deep", "5000-digit-integer"],
)
def test_a_body_the_json_decoder_fails_on_is_400_invalid_json(content: bytes) -> None:
    response = client().post("/echo", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        None,
        "invalid_json",
    )
    assert error["message"] == "The request body is not valid JSON."


@pytest.mark.parametrize(
    ("content", "content_type"),
    [(b'{"prompt": "hi"}', "text/plain"), (b'["hi"]', "application/json")],
    ids=["json-as-text-plain", "json-array"],
)
def test_a_body_that_is_no_json_object_is_400_invalid_json(
    content: bytes, content_type: str
) -> None:
    response = client().post("/echo", content=content, headers={"Content-Type": content_type})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (None, "invalid_json")
    assert "Content-Type: application/json" in error["message"]


def test_a_json_object_still_reaches_the_route() -> None:
    response = client().post("/echo", json={"prompt": "hi"})
    assert (response.status_code, response.json()) == (200, {"prompt": "hi"})


def test_a_field_vllms_request_model_refuses_is_its_400_counted_as_such() -> None:
    """vLLM raises it outside pydantic's errors; it must not escape the app as a server error
    (which Serve logs as a failed request, and the metrics count as a 500)."""
    metrics = Statuses()
    body = {"messages": [{"role": "user", "content": "hi"}], "thinking_token_budget": -2}
    response = client(metrics).post("/chat", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "thinking_token_budget")
    assert metrics.finished == [400]


@pytest.mark.parametrize(
    "fields",
    [{"messages": False}, {"structured_outputs": True}],
    ids=["messages-not-a-list", "structured-outputs-not-an-object"],
)
def test_a_body_vllms_validators_crash_on_is_400(fields: dict) -> None:
    """vLLM's `before` validators raise TypeError / AttributeError on these shapes; the
    client gets a validation error, not a 500."""
    body = {"messages": [{"role": "user", "content": "hi"}]} | fields
    response = client().post("/chat", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "malformed" in error["message"]
