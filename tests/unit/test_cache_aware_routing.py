"""The cache-aware routing policy's decisions on a made-up replica set: affinity, spill-over,
ties, sessions, bounded memory; and the router config the builder gives the LLM server."""

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from ray.serve._private.common import DeploymentID, ReplicaID, RequestMetadata
from ray.serve._private.constants import DEFAULT_REQUEST_ROUTER_PATH
from ray.serve._private.request_router.common import PendingRequest, ReplicaQueueLengthCache

from deployments.request_router import CacheAwareRouter, request_router_config
from serve_app.core.config import AppConfig
from serve_app.routing.cache_aware import CacheAwarePolicy, Candidate, block_hashes
from serve_app.vllm_compat import SamplingParams, engine_request

BLOCK = 16


def policy(cost: int = 64, max_blocks: int = 10_000, max_sessions: int = 100) -> CacheAwarePolicy:
    return CacheAwarePolicy(BLOCK, cost, max_blocks, max_sessions)


def prompt(tenant: int, length: int = 8 * BLOCK, tail: int = 0, question: int = 0) -> list[int]:
    """`length` tokens of tenant `tenant`'s system prompt, then `tail` tokens of a question."""
    return [tenant * 1000 + i for i in range(length)] + [50_000 + question] * tail


def idle(*replicas: str) -> list[Candidate]:
    return [Candidate(replica, 0) for replica in replicas]


def test_equal_prefixes_hash_equal_and_a_difference_changes_every_later_block():
    base = list(range(4 * BLOCK + 5))
    changed = [*base[:BLOCK], -1, *base[BLOCK + 1 :]]
    hashes, other = block_hashes(base, BLOCK), block_hashes(changed, BLOCK)
    assert len(hashes) == 4  # the 5-token tail is not a block
    assert hashes[0] == other[0]
    assert all(a != b for a, b in zip(hashes[1:], other[1:], strict=True))


def test_a_request_goes_where_its_prefix_was_sent():
    routing = policy()
    first = routing.key(prompt(1, tail=20), None)
    chosen = routing.rank(idle("a", "b", "c"), first)[0]
    routing.routed(chosen, first)
    for question in range(5):  # the same system prompt, other questions
        later = routing.key(prompt(1, tail=20, question=question + 1), None)
        assert routing.rank(idle("a", "b", "c"), later)[0] == chosen
        assert routing.cached_tokens(chosen, later) == 8 * BLOCK


def test_a_hot_prefix_spills_over_once_its_replica_is_busy_enough():
    routing = policy(cost=32)  # 8 cached blocks = 128 tokens = 4 requests of load
    key = routing.key(prompt(1), None)
    routing.routed("a", key)
    assert routing.rank([Candidate("a", 3), Candidate("b", 0)], key)[0] == "a"
    assert routing.rank([Candidate("a", 5), Candidate("b", 0)], key)[0] == "b"


def test_a_prefix_no_replica_holds_goes_to_the_least_busy():
    routing = policy()
    key = routing.key(prompt(2), None)
    loads = [Candidate("a", 3), Candidate("b", 1), Candidate("c", 2)]
    assert routing.rank(loads, key) == ["b", "c", "a"]


def test_new_prefixes_spread_over_idle_replicas_the_same_way_in_every_router():
    first, second = policy(), policy()  # two ingress replicas, nothing shared
    choices = []
    for tenant in range(300):
        key = first.key(prompt(tenant), None)
        choice = first.rank(idle("a", "b", "c"), key)[0]
        assert second.rank(idle("a", "b", "c"), second.key(prompt(tenant), None))[0] == choice
        choices.append(choice)
    counts = Counter(choices)
    assert set(counts) == {"a", "b", "c"}
    assert max(counts.values()) < 2 * min(counts.values())


def test_short_prompts_break_ties_at_random():
    routing = policy()
    key = routing.key([1, 2, 3], None)  # shorter than a block: nothing to hash
    firsts = Counter(routing.rank(idle("a", "b"), key)[0] for _ in range(200))
    assert set(firsts) == {"a", "b"}


def test_a_conversation_stays_on_its_replica_until_that_one_is_overloaded():
    routing = policy(cost=64)
    turn = routing.key(prompt(3, length=2 * BLOCK), "chat-1")
    routing.routed("b", turn)
    longer = routing.key(prompt(3, length=2 * BLOCK, tail=6 * BLOCK), "chat-1")
    assert routing.cached_tokens("b", longer) == 8 * BLOCK  # the whole conversation so far
    assert routing.rank([Candidate("a", 0), Candidate("b", 2)], longer)[0] == "b"
    assert routing.rank([Candidate("a", 0), Candidate("b", 3)], longer)[0] == "a"


def test_a_gone_replica_is_forgotten_with_its_conversations():
    routing = policy()
    key = routing.key(prompt(4), "chat-2")
    routing.routed("a", key)
    routing.forget("a")
    assert routing.remembered_blocks("a") == 0
    assert routing.remembered_sessions() == 0
    assert routing.cached_tokens("a", key) == 0


def test_memory_is_bounded_and_the_least_recent_prefix_goes_first():
    routing = policy(max_blocks=20, max_sessions=2)
    keys = [routing.key(prompt(tenant), f"chat-{tenant}") for tenant in range(4)]
    for key in keys:
        routing.routed("a", key)
    assert routing.remembered_blocks("a") == 20
    assert routing.remembered_sessions() == 2
    oldest, newest = (routing.key(prompt(t), None) for t in (0, 3))
    assert routing.cached_tokens("a", oldest) == 0
    assert routing.cached_tokens("a", newest) == 8 * BLOCK


def test_serve_default_keeps_serves_own_router():
    config = AppConfig(routing={"router": "serve_default"})
    assert request_router_config(config, "gpu").request_router_class == DEFAULT_REQUEST_ROUTER_PATH


@pytest.mark.parametrize(
    ("args", "accelerator", "block_tokens"),
    [
        ({}, "cpu", 128),
        ({}, "gpu", 16),
        ({"engine_kwargs": {"block_size": 32}}, "gpu", 32),
        ({"engine_kwargs": {"block_size": 32}, "routing": {"block_tokens": 64}}, "gpu", 64),
    ],
)
def test_the_cache_aware_router_cuts_prompts_like_the_engines_cache(
    args: dict, accelerator: str, block_tokens: int
):
    config = AppConfig(**args)
    router_config = request_router_config(config, accelerator)
    router_class = f"{CacheAwareRouter.__module__}.{CacheAwareRouter.__qualname__}"
    assert router_config.request_router_class == router_class
    assert router_config.request_router_kwargs == {
        "block_tokens": block_tokens,
        "queued_request_cost_tokens": config.routing.queued_request_cost_tokens,
        "max_blocks_per_replica": config.routing.max_blocks_per_replica,
        "max_sessions": config.routing.max_sessions,
    }


def serve_router(cost: int = 64) -> tuple[CacheAwareRouter, list[Any]]:
    """The router as Serve would hold it, over replicas "a" and "b", with no load known."""
    router = CacheAwareRouter.__new__(CacheAwareRouter)  # Serve's constructor needs a cluster
    router.initialize_state(
        block_tokens=BLOCK,
        queued_request_cost_tokens=cost,
        max_blocks_per_replica=1_000,
        max_sessions=10,
    )
    router._replica_queue_len_cache = ReplicaQueueLengthCache()
    deployment = DeploymentID(name="LLMServer", app_name="llm")
    replicas = [
        SimpleNamespace(replica_id=ReplicaID(unique_id=name, deployment_id=deployment))
        for name in ("a", "b")
    ]
    return router, replicas


def pending(request_id: str, tokens: list[int]) -> PendingRequest:
    """A generate call waiting for a replica (make it on a running loop: it holds a future)."""
    request = engine_request({"prompt_token_ids": tokens}, SamplingParams(), request_id, {})
    return PendingRequest(
        args=[request], kwargs={}, metadata=RequestMetadata(request_id, request_id)
    )


def test_after_offering_every_replica_the_router_lets_serve_back_off():
    """As Serve's own locality and multiplex mixins do: without it Serve asks again at once,
    without a pause, while every replica is full or slow to answer."""
    router, replicas = serve_router()

    async def choose() -> tuple[list[list[Any]], PendingRequest]:
        waiting = pending("r", prompt(5))
        return await router.choose_replicas(replicas, waiting), waiting

    ranks, waiting = asyncio.run(choose())
    assert sorted(rank[0].replica_id.unique_id for rank in ranks) == ["a", "b"]
    assert waiting.routing_context.should_backoff


def test_a_burst_of_one_prefix_ranked_before_any_is_routed_spreads_then_keeps_affinity():
    """Serve ranks the requests waiting at once before it sends any (and so before its loads
    count them): each ranked request counts on its first choice until it is routed."""
    router, replicas = serve_router(cost=512)

    async def burst() -> list[str]:
        waiting = [pending(f"r{i}", prompt(5, tail=i)) for i in range(4)]
        firsts = [(await router.choose_replicas(replicas, w))[0][0] for w in waiting]
        # Serve asks again for a request it could not place yet: it does not count twice.
        again = (await router.choose_replicas(replicas, waiting[0]))[0][0]
        assert again is firsts[0]
        for request, replica in zip(waiting, firsts, strict=True):
            router.on_request_routed(request, replica.replica_id, None)
        later = await router.choose_replicas(replicas, pending("r9", prompt(5, tail=9)))
        return [r.replica_id.unique_id for r in [*firsts, later[0][0]]]

    *firsts, later = asyncio.run(burst())
    assert Counter(firsts) == {"a": 2, "b": 2}
    assert list(router._unrouted) == ["r9"]  # the four routed ones count no more
    assert later in firsts  # both hold the prefix now; the loads decide
