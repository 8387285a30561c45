"""CORS: off by default; for the configured origins, preflights answered before the API-key
check and every answer (errors included) readable by the page."""

import pytest
from fastapi.testclient import TestClient

from serve_app.api.http_app import create_app

PAGE = "https://app.example.com"
PREFLIGHT = {
    "Origin": PAGE,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type",
}


def client(monkeypatch: pytest.MonkeyPatch, origins: tuple[str, ...]) -> TestClient:
    monkeypatch.setenv("API_KEYS", "sk-1")
    app = create_app()
    app.state.allowed_origins = origins

    @app.post("/v1/echo")
    async def echo() -> dict:
        return {"ok": True}

    return TestClient(app)


def test_without_allowed_origins_no_cors_header_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    http = client(monkeypatch, ())
    preflight = http.options("/v1/echo", headers=PREFLIGHT)
    assert preflight.status_code == 401  # an OPTIONS like any request: the key is checked
    answer = http.post("/v1/echo", headers={"Origin": PAGE, "Authorization": "Bearer sk-1"})
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers


def test_an_allowed_origins_preflight_needs_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    preflight = client(monkeypatch, (PAGE,)).options("/v1/echo", headers=PREFLIGHT)
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == PAGE
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()


def test_another_origins_preflight_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    headers = PREFLIGHT | {"Origin": "https://evil.example.com"}
    preflight = client(monkeypatch, (PAGE,)).options("/v1/echo", headers=headers)
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers


def test_answers_and_errors_carry_the_cors_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    http = client(monkeypatch, (PAGE,))
    answer = http.post("/v1/echo", headers={"Origin": PAGE, "Authorization": "Bearer sk-1"})
    refused = http.post("/v1/echo", headers={"Origin": PAGE})
    assert (answer.status_code, refused.status_code) == (200, 401)
    for response in (answer, refused):
        assert response.headers["access-control-allow-origin"] == PAGE
        assert "x-request-id" in response.headers["access-control-expose-headers"]


def test_a_wildcard_allows_any_page(monkeypatch: pytest.MonkeyPatch) -> None:
    headers = PREFLIGHT | {"Origin": "https://other.example.org"}
    preflight = client(monkeypatch, ("*",)).options("/v1/echo", headers=headers)
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] in ("*", "https://other.example.org")
