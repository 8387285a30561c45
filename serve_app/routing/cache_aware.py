"""The cache-aware routing policy: which LLM-server replica saves a request the most prefill
for how busy it is.

A prompt is cut into blocks of vLLM's prefix-cache size, each block's hash covering the whole
prefix up to it, so equal hashes mean equal prefixes. The policy remembers which blocks each
replica was sent (bounded: least recently used forgotten) and which replica each conversation
went to. A replica's score is the prefill its cache would save (tokens) minus the cost of its
extra load (`queued_request_cost_tokens` per request above the least busy replica): a hot prefix
spills over to a second replica once the first is busy enough, and a request that no replica
holds goes to the least busy one. Equal scores are broken by rendezvous hashing of the prompt's
first tokens (or its session), so every ingress replica, each with a policy of its own, sends
the same new prefix to the same replica, and different prefixes to different replicas.

Pure logic over replica ids and load counts; `deployments/request_router.py` feeds it from
Ray Serve's router.
"""

import hashlib
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from serve_app.core.constants import ROUTING_ANCHOR_TOKENS


def block_hashes(token_ids: Sequence[int], block_tokens: int) -> list[int]:
    """One hash per full block of `token_ids`, each covering the prefix up to its block's end
    (the tail shorter than a block is not cached by vLLM, and not hashed)."""
    hashes: list[int] = []
    parent = 0
    for end in range(block_tokens, len(token_ids) + 1, block_tokens):
        parent = hash((parent, tuple(token_ids[end - block_tokens : end])))
        hashes.append(parent)
    return hashes


@dataclass(frozen=True)
class Candidate:
    """A replica the request may go to, with the requests running or queued on it."""

    replica: str
    load: int


@dataclass(frozen=True)
class RoutingKey:
    """What of a request the policy reads: its prompt's block hashes and its conversation."""

    blocks: list[int]
    session: str | None = None


class CacheAwarePolicy:
    """Ranks replicas for a request and remembers where requests went."""

    def __init__(
        self,
        block_tokens: int,
        queued_request_cost_tokens: int,
        max_blocks_per_replica: int,
        max_sessions: int,
    ) -> None:
        self.block_tokens = block_tokens
        self._cost = queued_request_cost_tokens
        self._max_blocks = max_blocks_per_replica
        self._max_sessions = max_sessions
        self._anchor_blocks = max(1, ROUTING_ANCHOR_TOKENS // block_tokens)
        self._blocks: dict[str, OrderedDict[int, None]] = {}
        self._sessions: OrderedDict[str, str] = OrderedDict()

    def key(self, token_ids: Sequence[int], session: str | None) -> RoutingKey:
        return RoutingKey(block_hashes(token_ids, self.block_tokens), session)

    def cached_tokens(self, replica: str, key: RoutingKey) -> int:
        """Prompt tokens the replica likely holds in its prefix cache: the blocks it was sent,
        or its whole conversation so far when the request's session went to it."""
        held = self._blocks.get(replica, {})
        matched = len(key.blocks)
        for index, block in enumerate(key.blocks):
            if block not in held:
                matched = index
                break
        if key.session is not None and self._sessions.get(key.session) == replica:
            matched = len(key.blocks)
        return matched * self.block_tokens

    def rank(self, candidates: Sequence[Candidate], key: RoutingKey) -> list[str]:
        """Candidate replicas, best first."""
        least = min(candidate.load for candidate in candidates)
        anchor = self._anchor(key)

        def order(candidate: Candidate) -> tuple[int, float]:
            score = self.cached_tokens(candidate.replica, key) - self._cost * (
                candidate.load - least
            )
            return -score, _tie_break(anchor, candidate.replica)

        return [candidate.replica for candidate in sorted(candidates, key=order)]

    def routed(self, replica: str, key: RoutingKey) -> None:
        """The request went to `replica`: its blocks are (about to be) in that replica's
        cache, and its conversation stays there."""
        held = self._blocks.setdefault(replica, OrderedDict())
        for block in key.blocks:
            held[block] = None
            held.move_to_end(block)
        while len(held) > self._max_blocks:
            held.popitem(last=False)
        if key.session is not None:
            self._sessions[key.session] = replica
            self._sessions.move_to_end(key.session)
            while len(self._sessions) > self._max_sessions:
                self._sessions.popitem(last=False)

    def forget(self, replica: str) -> None:
        """The replica is gone (its conversations fall to the others)."""
        self._blocks.pop(replica, None)
        for session in [s for s, r in self._sessions.items() if r == replica]:
            del self._sessions[session]

    def remembered_blocks(self, replica: str) -> int:
        return len(self._blocks.get(replica, ()))

    def remembered_sessions(self) -> int:
        return len(self._sessions)

    def _anchor(self, key: RoutingKey) -> str | None:
        if key.session is not None:
            return key.session
        if key.blocks:
            return str(key.blocks[min(len(key.blocks), self._anchor_blocks) - 1])
        return None


def _tie_break(anchor: str | None, replica: str) -> float:
    """Rendezvous hashing: the same order of replicas for the same anchor in every process; a
    random one for a request too short to have an anchor."""
    if anchor is None:
        return random.random()
    digest = hashlib.blake2b(f"{anchor}|{replica}".encode(), digest_size=8).digest()
    return int.from_bytes(digest) / 2**64
