"""The cache-aware request router of the LLM-server deployment, on Ray Serve's custom
request-router API (`request_router_config`).

Every handle to the deployment (one per ingress replica) has a router of its own. For a
`generate` call it ranks the replicas with `serve_app.routing.cache_aware` from the request's
rendered prompt tokens and session, and the loads Serve's router already tracks (requests sent
and not finished, corrected by the replicas' own answers) plus the requests this router ranked
and Serve has not routed yet; Serve then tries the ranks in turn, skipping a replica that is
full. Other calls (engine config, model info) go to the least busy.
"""

import time
from collections import Counter
from typing import Any

from ray.serve.config import RequestRouterConfig
from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from serve_app.core.config import Accelerator, AppConfig
from serve_app.routing.cache_aware import CacheAwarePolicy, Candidate, RoutingKey
from serve_app.vllm_compat import EngineRequest, default_block_size

# A ranked request Serve has not routed after this long was cancelled (or waits for a full
# replica): it stops counting as load on the replica it was ranked first on.
UNROUTED_TTL_S = 30.0


class CacheAwareRouter(RequestRouter):
    """Sends each request where its prompt's prefix is cached, unless that replica is too busy."""

    def initialize_state(self, **policy: int) -> None:
        """`policy`: `request_router_config`'s kwargs, the policy's arguments."""
        self._policy = CacheAwarePolicy(**policy)
        # Requests ranked and not routed yet, by internal request id: the replica ranked first
        # and when. Serve ranks the requests waiting at once in tasks of its own, before any
        # is sent and counted in its loads: without these, a burst of one prefix all went to
        # the replica of the prefix's rendezvous hash.
        self._unrouted: dict[str, tuple[str, float]] = {}

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if pending_request is not None:
            # Every rank below offers all the candidates: once Serve has tried them all, it
            # must back off before asking again (without this it asks again at once, without
            # a pause, while every replica is full).
            pending_request.routing_context.should_backoff = True
        key = self._key(pending_request)
        if key is None:
            return [candidate_replicas]
        by_id = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        request_id = pending_request.metadata.internal_request_id
        oldest = time.monotonic() - UNROUTED_TTL_S
        self._unrouted = {r: entry for r, entry in self._unrouted.items() if entry[1] >= oldest}
        others = Counter(first for r, (first, _) in self._unrouted.items() if r != request_id)
        loads = [Candidate(rid, self._load(r) + others[rid]) for rid, r in by_id.items()]
        ranked = self._policy.rank(loads, key)
        self._unrouted[request_id] = (ranked[0], time.monotonic())
        return [[by_id[replica_id]] for replica_id in ranked]

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any
    ) -> None:
        key = self._key(pending_request)
        if key is not None:
            self._policy.routed(replica_id.unique_id, key)
            self._unrouted.pop(pending_request.metadata.internal_request_id, None)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        gone = set(self.curr_replicas) - {replica.replica_id for replica in replicas}
        super().update_replicas(replicas)
        for replica_id in gone:
            self._policy.forget(replica_id.unique_id)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._policy.forget(replica_id.unique_id)

    def _key(self, pending_request: PendingRequest | None) -> RoutingKey | None:
        """The routing key of a `generate` call (its only argument is an EngineRequest)."""
        if pending_request is None or not pending_request.args:
            return None
        request = pending_request.args[0]
        if not isinstance(request, EngineRequest):
            return None
        return self._policy.key(request.prompt_token_ids(), request.session)

    def _load(self, replica: RunningReplica) -> int:
        """Requests running or queued on the replica, as this router last knew (0: unknown)."""
        return self.replica_queue_len_cache.get(replica.replica_id) or 0


def request_router_config(config: AppConfig, accelerator: Accelerator) -> RequestRouterConfig:
    """The LLM-server deployment's router: Serve's default, or this one with the app's
    routing settings (blocks as large as the engine's KV-cache blocks)."""
    routing = config.routing
    if routing.router == "serve_default":
        return RequestRouterConfig()
    block_tokens = (
        routing.block_tokens
        or config.engine_kwargs.get("block_size")
        or default_block_size(accelerator)
    )
    return RequestRouterConfig(
        request_router_class=CacheAwareRouter,
        request_router_kwargs={
            "block_tokens": block_tokens,
            "queued_request_cost_tokens": routing.queued_request_cost_tokens,
            "max_blocks_per_replica": routing.max_blocks_per_replica,
            "max_sessions": routing.max_sessions,
        },
    )
