"""The cache-aware request router of the LLM-server deployment, on Ray Serve's custom
request-router API (`request_router_config`).

Every handle to the deployment (one per ingress replica) has a router of its own. For a
`generate` call it ranks the replicas with `serve_app.routing.cache_aware` from the request's
rendered prompt tokens and session, and the loads Serve's router already tracks (requests sent
and not finished, corrected by the replicas' own answers); Serve then tries the ranks in turn,
skipping a replica that is full. Other calls (engine config, model info) go to the least busy.
"""

from typing import Any

from ray.serve.config import RequestRouterConfig
from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from serve_app.core.config import Accelerator, AppConfig
from serve_app.routing.cache_aware import CacheAwarePolicy, Candidate, RoutingKey
from serve_app.vllm_compat import EngineRequest, default_block_size


class CacheAwareRouter(RequestRouter):
    """Sends each request where its prompt's prefix is cached, unless that replica is too busy."""

    def initialize_state(self, **policy: int) -> None:
        """`policy`: `request_router_config`'s kwargs, the policy's arguments."""
        self._policy = CacheAwarePolicy(**policy)

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if pending_request is not None:
            # Every rank below offers all the candidates: once Serve has tried them all, it
            # must back off before asking again (without this it asks again at once, and a
            # full or slow replica spins the router's thread: seen in CI at 42% of a core).
            pending_request.routing_context.should_backoff = True
        key = self._key(pending_request)
        if key is None:
            return [candidate_replicas]
        by_id = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        loads = [Candidate(replica_id, self._load(r)) for replica_id, r in by_id.items()]
        return [[by_id[replica_id]] for replica_id in self._policy.rank(loads, key)]

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any
    ) -> None:
        key = self._key(pending_request)
        if key is not None:
            self._policy.routed(replica_id.unique_id, key)

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
