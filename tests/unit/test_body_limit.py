"""Request bodies over the configured limit are refused with 413 before the route reads them."""

from collections.abc import Iterator

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from serve_app.api.middleware.body_limit import BodyLimitMiddleware

LIMIT = 1000


def client(limit: int | None, reads: list[int]) -> TestClient:
    app = FastAPI()
    app.add_middleware(BodyLimitMiddleware)
    if limit is not None:
        app.state.max_request_bytes = limit

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        reads.append(len(await request.body()))
        return {"read": reads[-1]}

    return TestClient(app)


def chunks(total: int, size: int = 100) -> Iterator[bytes]:
    for _ in range(total // size):
        yield b"x" * size


def test_a_body_within_the_limit_reaches_the_route() -> None:
    reads: list[int] = []
    response = client(LIMIT, reads).post("/echo", content=b"x" * LIMIT)
    assert (response.status_code, reads) == (200, [LIMIT])


def test_a_declared_length_over_the_limit_is_an_openai_413_unread() -> None:
    reads: list[int] = []
    response = client(LIMIT, reads).post("/echo", content=b"x" * (LIMIT + 1))
    assert response.status_code == 413
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "request_too_large",
        None,
    )
    assert str(LIMIT) in error["message"]
    assert reads == []


def test_a_chunked_body_is_cut_off_once_it_passes_the_limit() -> None:
    reads: list[int] = []
    response = client(LIMIT, reads).post("/echo", content=chunks(LIMIT * 3))
    assert response.status_code == 413
    assert reads == []


def test_a_chunked_body_within_the_limit_reaches_the_route() -> None:
    reads: list[int] = []
    response = client(LIMIT, reads).post("/echo", content=chunks(LIMIT))
    assert (response.status_code, reads) == (200, [LIMIT])


def test_without_a_configured_limit_bodies_pass() -> None:
    reads: list[int] = []
    assert client(None, reads).post("/echo", content=b"x" * (LIMIT * 10)).status_code == 200
    assert reads == [LIMIT * 10]
