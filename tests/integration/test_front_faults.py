"""Faults in front of the engine: an ingress replica killed, HAProxy killed. Requests sent
after the fault get answers, never a cut connection, and the front is whole again within a
bound. A request in flight on the killed ingress replica gets HAProxy's plain-text 500 (Serve
maps HAProxy's 502 to 500) or a closed connection: HAProxy replays only requests that never
reached a server (Serve's `RAY_SERVE_HAPROXY_RETRY_ON=conn-failure empty-response` replayed
none in a try: 0 retries counted, the dead replica's requests got 500).

Run with `-s` to see the times (docs/reliability.md describes the faults).
"""

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import ray

from serve_app.core.constants import INGRESS_DEPLOYMENT
from serve_app.runtime.leftovers import is_serve_haproxy
from tests.integration.figures import Figures

RECOVERY_BOUND_S = 120
HAPROXY_RECOVERY_BOUND_S = 20
PROBE_EVERY_S = 0.2
IN_FLIGHT = 6


def ingress_actors() -> list[str]:
    return [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if f"#{INGRESS_DEPLOYMENT}#" in actor["name"]
    ]


def ask(base_url: str, model: str, max_tokens: int = 1) -> int | str:
    """One completion on a connection of its own: its status, or the transport error."""
    body = {"model": model, "prompt": "Hi", "max_tokens": max_tokens, "ignore_eos": True}
    try:
        return httpx.post(f"{base_url}/v1/completions", json=body, timeout=60).status_code
    except httpx.TransportError as exc:
        return type(exc).__name__


def probe_until(base_url: str, model: str, done: Callable[[], bool]) -> tuple[list, float]:
    """Requests every PROBE_EVERY_S until `done()` (bounded): their outcomes, and when."""
    start, outcomes = time.monotonic(), []
    while not done():
        assert time.monotonic() - start < RECOVERY_BOUND_S, f"not recovered: {outcomes[-5:]}"
        outcomes.append(ask(base_url, model))
        time.sleep(PROBE_EVERY_S)
    return outcomes, time.monotonic() - start


def test_a_killed_ingress_replica_is_replaced_while_the_other_answers(
    base_url: str, model: str, figures: Figures
) -> None:
    before = set(ingress_actors())
    assert len(before) == 2
    victim = sorted(before)[0]
    handle = ray.get_actor(victim, namespace="serve")
    process = psutil.Process(ray.get(handle.__ray_call__.remote(lambda _: os.getpid())))
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        # Requests under way on both ingress replicas when one dies (HAProxy spreads them).
        in_flight = [pool.submit(ask, base_url, model, 48) for _ in range(IN_FLIGHT)]
        time.sleep(1)
        ray.kill(handle, no_restart=True)
        process.wait(timeout=30)  # ray.kill returns before the process is gone

        def replaced() -> bool:
            names = set(ingress_actors())
            return len(names) == 2 and victim not in names and ask(base_url, model) == 200

        outcomes, seconds = probe_until(base_url, model, replaced)
        answered = [future.result() for future in in_flight]
    figures.record(
        "ingress replica killed", in_flight=answered, sent_meanwhile=outcomes,
        replaced_after_s=round(seconds, 1),
    )  # fmt: skip
    # HAProxy (leastconn) gives each replica half of them: the live one's are answered; the
    # dead one's get HAProxy's 500 or, cut while HAProxy still relayed the body, no answer.
    assert answered.count(200) >= IN_FLIGHT // 2, answered
    assert set(answered) <= {200, 500, "RemoteProtocolError"}, answered
    assert outcomes and set(outcomes) == {200}, outcomes


def test_a_killed_haproxy_is_started_again(base_url: str, model: str, figures: Figures) -> None:
    haproxies = [p for p in psutil.Process().children(recursive=True) if is_serve_haproxy(p)]
    assert haproxies, "no Serve HAProxy under this session"
    for haproxy in haproxies:
        haproxy.kill()
    psutil.wait_procs(haproxies, timeout=10)
    outcomes, seconds = probe_until(base_url, model, lambda: ask(base_url, model) == 200)
    figures.record(
        "HAProxy killed", answering_after_s=round(seconds, 1), meanwhile=sorted(map(str, outcomes))
    )
    assert seconds < HAPROXY_RECOVERY_BOUND_S
    # Until Serve's controller restarts it (its health check fails 3 times, 2 s apart),
    # nothing listens: connections are refused; the new HAProxy answers 404 until it has the
    # app's route. Never a request half answered.
    assert set(outcomes) <= {"ConnectError", 404}, outcomes
