"""The request streams of the routing benchmark (`benchmarks.serving.prefix_routing`), as
token-id prompts so that every stack sees exactly the same tokens.

- multi_tenant: `tenants` system prompts of `prefix_len` tokens, each request one of them
  (at random) and a question of its own, Poisson arrivals;
- multi_turn: `conversations` chats of `turns` turns run side by side, each turn the whole
  history (last answer included) plus a new question, sent with the chat's session id;
- hot_prefix: every request the same system prompt, at a high rate;
- no_reuse: prompts that share nothing, at the multi-tenant rate;
- bursts: groups of requests with one new system prompt, each group arriving at once.
"""

import random
from typing import Literal

from pydantic import BaseModel

WorkloadName = Literal["multi_tenant", "multi_turn", "hot_prefix", "no_reuse", "bursts"]
WORKLOADS: tuple[WorkloadName, ...] = (
    "multi_tenant",
    "multi_turn",
    "hot_prefix",
    "no_reuse",
    "bursts",
)
# Token ids drawn for prompts: inside every vocabulary the benchmark uses (SmolLM2: 49 152).
TOKEN_RANGE = (1_000, 30_000)


class Scale(BaseModel):
    """The sizes of every workload on one kind of machine."""

    tenants: int
    prefix_len: int
    question_len: int
    max_tokens: int
    requests: int
    rate: float  # requests per second, multi_tenant and no_reuse
    hot_rate: float
    conversations: int
    turns: int
    answer_len: int
    bursts: int
    burst_size: int
    burst_gap_s: float


SCALES: dict[str, Scale] = {
    # 2 CPU replicas of the 135M default model, one core each (~190 prompt tokens/s each).
    "cpu": Scale(
        tenants=12, prefix_len=256, question_len=16, max_tokens=8, requests=32, rate=0.5,
        hot_rate=1.0, conversations=4, turns=4, answer_len=48, bursts=4, burst_size=4,
        burst_gap_s=8.0,
    ),
    # Replicas of an 8B-shape dummy model sharing one H200.
    "gpu": Scale(
        tenants=16, prefix_len=2048, question_len=64, max_tokens=32, requests=480, rate=24.0,
        hot_rate=48.0, conversations=32, turns=6, answer_len=128, bursts=8, burst_size=16,
        burst_gap_s=1.5,
    ),
}  # fmt: skip


class PlannedRequest(BaseModel):
    """One request: when it leaves (seconds from the start), its prompt, its session; a
    request with `after` waits for that one (the previous turn of its chat) to finish."""

    at: float
    prompt: list[int]
    session: str | None = None
    after: int | None = None


def _tokens(rng: random.Random, count: int) -> list[int]:
    return [rng.randrange(*TOKEN_RANGE) for _ in range(count)]


def _poisson(rng: random.Random, count: int, rate: float) -> list[float]:
    times, now = [], 0.0
    for _ in range(count):
        now += rng.expovariate(rate)
        times.append(now)
    return times


def plan(name: WorkloadName, scale: Scale, seed: int) -> list[PlannedRequest]:
    """The requests of workload `name`, the same for the same seed."""
    rng = random.Random(f"{name}-{seed}")
    if name == "multi_tenant":
        prefixes = [_tokens(rng, scale.prefix_len) for _ in range(scale.tenants)]
        return [
            PlannedRequest(at=at, prompt=rng.choice(prefixes) + _tokens(rng, scale.question_len))
            for at in _poisson(rng, scale.requests, scale.rate)
        ]
    if name == "no_reuse":
        length = scale.prefix_len + scale.question_len
        return [
            PlannedRequest(at=at, prompt=_tokens(rng, length))
            for at in _poisson(rng, scale.requests, scale.rate)
        ]
    if name == "hot_prefix":
        prefix = _tokens(rng, scale.prefix_len)
        return [
            PlannedRequest(at=at, prompt=prefix + _tokens(rng, scale.question_len))
            for at in _poisson(rng, scale.requests, scale.hot_rate)
        ]
    if name == "bursts":
        requests = []
        for burst in range(scale.bursts):
            prefix = _tokens(rng, scale.prefix_len)
            requests += [
                PlannedRequest(
                    at=burst * scale.burst_gap_s, prompt=prefix + _tokens(rng, scale.question_len)
                )
                for _ in range(scale.burst_size)
            ]
        return requests
    requests = []  # multi_turn: chat c's turn t follows its turn t - 1
    for chat in range(scale.conversations):
        history = _tokens(rng, scale.prefix_len) + _tokens(rng, scale.question_len)
        for turn in range(scale.turns):
            requests.append(
                PlannedRequest(
                    at=chat * 0.1 if turn == 0 else 0.0,
                    prompt=list(history),
                    session=f"chat-{seed}-{chat}",
                    after=None if turn == 0 else len(requests) - 1,
                )
            )
            history += _tokens(rng, scale.answer_len) + _tokens(rng, scale.question_len)
    return requests
