"""serve_app.runtime.runner's drain: applications are deleted (their replicas finish in-flight
requests) before Serve, and with it HAProxy, is shut down. The real drain, a stream that
outlives SIGTERM, is tests/integration/test_entrypoint.py's."""

import pytest
from ray import serve

from serve_app.runtime import runner


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    made: list[str] = []
    monkeypatch.setattr(serve, "delete", lambda name: made.append(f"delete {name}"))
    monkeypatch.setattr(serve, "shutdown", lambda: made.append("shutdown"))
    return made


def test_applications_are_deleted_before_serve_shuts_down(calls: list[str]) -> None:
    runner.drain_and_shutdown(["llm", "other"])
    assert calls == ["delete llm", "delete other", "shutdown"]


def test_a_signal_during_the_drain_still_shuts_serve_down(
    calls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(name: str) -> None:
        raise SystemExit(0)  # what the runner's SIGTERM handler raises

    monkeypatch.setattr(serve, "delete", interrupted)
    with pytest.raises(SystemExit):
        runner.drain_and_shutdown(["llm"])
    assert calls == ["shutdown"]
