"""API keys: every route but /health needs a valid bearer key once keys are configured."""

import hashlib

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from serve_app.api.middleware.auth import APIKeyMiddleware, keys_from_env


def client(keys: list[str]) -> TestClient:
    app = FastAPI()
    app.add_middleware(APIKeyMiddleware, keys=keys)

    @app.get("/health")
    def health() -> dict:
        return {"status": "healthy"}

    @app.get("/v1/models")
    def models() -> dict:
        return {"data": []}

    return TestClient(app)


def test_without_keys_everything_is_open() -> None:
    assert client([]).get("/v1/models").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic secret"},
        {"Authorization": "Bearer"},
    ],
)
def test_missing_or_wrong_key_is_an_openai_401(headers: dict) -> None:
    response = client(["secret"]).get("/v1/models", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")


def test_any_configured_key_is_accepted() -> None:
    api = client(["first", "second"])
    for key in ("first", "second"):
        assert api.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_health_stays_open_for_load_balancers() -> None:
    assert client(["secret"]).get("/health").status_code == 200


def test_keys_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", " a , b,,")
    assert keys_from_env() == ("a", "b")
    monkeypatch.delenv("API_KEYS")
    assert keys_from_env() == ()


def test_a_key_may_be_named_and_the_name_reaches_the_route() -> None:
    app = FastAPI()
    app.add_middleware(APIKeyMiddleware, keys=["alice:sk-a", "sk-b"])

    @app.get("/v1/models")
    def models(request: Request) -> dict:
        return {"name": request.state.api_key_name}

    api = TestClient(app)
    named = api.get("/v1/models", headers={"Authorization": "Bearer sk-a"})
    assert named.json() == {"name": "alice"}
    unnamed = api.get("/v1/models", headers={"Authorization": "Bearer sk-b"})
    assert unnamed.json() == {"name": f"key-{hashlib.sha256(b'sk-b').hexdigest()[:8]}"}
    assert api.get("/v1/models", headers={"Authorization": "Bearer alice:sk-a"}).status_code == 401
