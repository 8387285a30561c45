"""serve_app.runtime.runner's drain: the ingress is told to drain (new requests get 503
while those in flight finish), then applications are deleted before Serve, and with it
HAProxy, is shut down. The real drain, a stream that outlives SIGTERM while a new request
gets 503, is tests/integration/test_entrypoint.py's."""

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from ray import serve
from ray.serve.schema import ServeDeploySchema

from serve_app.core.constants import INGRESS_DEPLOYMENT
from serve_app.runtime import runner
from serve_app.runtime.serve_config import deployment_section, load_deploy_config, to_dict

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def config() -> ServeDeploySchema:
    return load_deploy_config(REPO / "serve_config.yaml", {})


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the drain asked of Serve, in order; the ingress holds 2, then 1, then 0 requests."""
    made: list[str] = []
    in_flight: Iterator[int] = iter([2, 1, 0])

    def deployed(config: ServeDeploySchema) -> None:
        ingress = deployment_section(to_dict(config), INGRESS_DEPLOYMENT)
        made.append(f"deploy user_config={ingress.get('user_config')}")

    def requests(app_name: str) -> int:
        count = next(in_flight)
        made.append(f"{app_name} holds {count}")
        return count

    monkeypatch.setattr(runner, "DRAIN_APPLY_S", 0)
    monkeypatch.setattr(runner, "own_ray_stopped", lambda: False)
    monkeypatch.setattr(runner, "deploy", deployed)
    monkeypatch.setattr(runner, "ingress_requests", requests)
    monkeypatch.setattr(serve, "delete", lambda name: made.append(f"delete {name}"))
    monkeypatch.setattr(serve, "shutdown", lambda: made.append("shutdown"))
    return made


def test_the_ingress_drains_then_applications_are_deleted_then_serve_stops(
    calls: list[str], config: ServeDeploySchema
) -> None:
    runner.drain_and_shutdown(config)
    assert calls == [
        "deploy user_config={'draining': True}",
        "llm holds 2",
        "llm holds 1",
        "llm holds 0",
        "delete llm",
        "shutdown",
    ]


def test_the_wait_for_requests_in_flight_is_bounded(
    calls: list[str], config: ServeDeploySchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "ingress_requests", lambda _: 1)
    runner.refuse_new_requests(config, timeout_s=0.5)
    assert calls == ["deploy user_config={'draining': True}"]


def test_a_failed_drain_still_deletes_and_shuts_down(
    calls: list[str], config: ServeDeploySchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(_: str) -> int:
        raise TimeoutError("no answer")

    monkeypatch.setattr(runner, "ingress_requests", unreachable)
    runner.drain_and_shutdown(config)
    assert calls[-2:] == ["delete llm", "shutdown"]


def test_a_signal_during_the_drain_still_shuts_serve_down(
    calls: list[str], config: ServeDeploySchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(_: str) -> int:
        raise SystemExit(0)  # what the runner's SIGTERM handler raises

    monkeypatch.setattr(runner, "ingress_requests", interrupted)
    with pytest.raises(SystemExit):
        runner.drain_and_shutdown(config)
    assert calls == ["deploy user_config={'draining': True}", "shutdown"]


def test_when_the_signal_stopped_ray_too_nothing_is_asked_of_serve(
    calls: list[str], config: ServeDeploySchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "own_ray_stopped", lambda: True)
    runner.drain_and_shutdown(config)
    assert calls == []


def test_own_ray_stopped_follows_the_gcs_process_a_process_started(tmp_path: Path) -> None:
    gcs_server = tmp_path / "gcs_server"  # a process of that name, as Ray's
    shutil.copy(shutil.which("sleep") or "/bin/sleep", gcs_server)
    # Stands for the runner: starts the "GCS", reaps it when it exits, lives on.
    script = (
        f"import subprocess, time; subprocess.Popen([{str(gcs_server)!r}, '30']).wait(); "
        "time.sleep(30)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        owner = psutil.Process(parent.pid)
        deadline = time.monotonic() + 10
        while not owner.children() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not runner.own_ray_stopped(wait_s=0.1, process=owner)
        answer: list[bool] = []
        asked = threading.Thread(
            target=lambda: answer.append(runner.own_ray_stopped(wait_s=5, process=owner))
        )
        asked.start()  # the question finds the GCS running, then sees it stop
        time.sleep(0.2)
        for child in owner.children():
            child.terminate()
        asked.join(timeout=10)
        assert answer == [True]
    finally:
        parent.kill()
        parent.wait()
