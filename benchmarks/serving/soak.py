"""Soak: our app under mixed traffic for minutes, every answer checked, memory watched.

Starts our app (the default model on this machine's backend, `benchmarks.lib.serving_stacks`)
with two API keys, `steady` and `greedy`, and a per-key rate limit that `greedy` is made to
exceed, then drives it for `--duration-s` from one asyncio client:

- `--workers` clients with the `steady` key (no limit), each sending, one after the other,
  a random mix of chat and completions, streamed and not, with small `max_tokens`; streams
  the client cuts after a few events; and deliberately bad requests: invalid JSON, an
  unknown model, a negative `max_tokens`, no API key (400, 404, 400, 401 expected);
- one client with the `greedy` key, a request every `--greedy-interval-s` (at most
  `--greedy-in-flight` unanswered), far above its `--greedy-rpm` (429 `rate_limit_exceeded`
  with `Retry-After` expected once over it).

Every answer is expected (a 2xx with a well-formed body or a stream ending in `[DONE]`; a
stream we cut; the deliberate 4xx or 429 with the expected OpenAI error body
`{"error": {message, type, param, code}}`) or unexpected (a 5xx, a transport error or
timeout, a stream cut without `[DONE]` or carrying an error event, a wrong status, a body
of the wrong shape). Every `--sample-every-s` the RSS of the app's processes (found among
this process's descendants by process title: the ingress replicas, the LLM server replica,
its vLLM `EngineCore` and worker, the `RateLimiter` replica, HAProxy) is sampled; growth is
from the first sample at or after `--warmup-s` to the last. After the traffic, the app's
`/metrics` must show no request left running in the engine or the ingress.

    python -m benchmarks.serving.soak [--duration-s 600] [--workers 6] [--greedy-rpm 6]
        [--warmup-s 60] [--out benchmarks/results/cpu/<date>-soak]

Writes `soak.json` and `soak.png` under `--out` (default `benchmarks/results/<machine>/
<date>-soak`); the app's output goes to `--log` (default: a temporary file). Exits 1 when
any answer was unexpected, the greedy key got more than its limit allows, it was never
refused, or requests were left in flight.
"""

import argparse
import asyncio
import json
import math
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, get_args

import aiohttp
import psutil
from pydantic import BaseModel, Field

from benchmarks.lib.report import default_out, figure, provenance
from benchmarks.lib.serving_stacks import (
    OURS_PORT,
    OurAppOptions,
    add_engine_args,
    engine_setup_from_args,
    our_app,
    our_config,
)
from serve_app.core.constants import (
    ENV_API_KEYS,
    INGRESS_DEPLOYMENT,
    LLM_SERVER_DEPLOYMENT,
    RATE_LIMITER_DEPLOYMENT,
)

MODULE = "benchmarks.serving.soak"

Outcome = Literal["success", "cancelled", "expected_error", "rate_limited", "unexpected"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
EXPECTED_OUTCOMES = frozenset(OUTCOMES) - {"unexpected"}
Kind = Literal[
    "chat",
    "chat_stream",
    "completion",
    "completion_stream",
    "cancelled_stream",
    "invalid_json",
    "unknown_model",
    "negative_max_tokens",
    "missing_key",
    "greedy",
]
# The steady workers' mix (relative weights); `greedy` has a worker of its own.
MIX: dict[Kind, int] = {
    "chat": 3,
    "chat_stream": 3,
    "completion": 2,
    "completion_stream": 2,
    "cancelled_stream": 2,
    "invalid_json": 1,
    "unknown_model": 1,
    "negative_max_tokens": 1,
    "missing_key": 1,
}


class ExpectedError(BaseModel):
    status: int
    type: str
    code: str | None = Field(description="None: any code.")


# What each deliberately bad request must be answered with (docs/api.md, "Errors").
EXPECTED_ERRORS: dict[Kind, ExpectedError] = {
    "invalid_json": ExpectedError(status=400, type="invalid_request_error", code="invalid_json"),
    "unknown_model": ExpectedError(
        status=404, type="invalid_request_error", code="model_not_found"
    ),
    "negative_max_tokens": ExpectedError(status=400, type="invalid_request_error", code=None),
    "missing_key": ExpectedError(status=401, type="invalid_request_error", code="invalid_api_key"),
}
RATE_LIMITED = ExpectedError(status=429, type="requests", code="rate_limit_exceeded")

QUESTIONS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three uses of Python.",
    "Why is the sky blue?",
    "Give one tip for writing clear code.",
    "Name three planets of the solar system.",
)
PROMPTS = ("Once upon a time", "The three primary colours are", "def fibonacci(n):")
MAX_TOKENS = (8, 32)
CANCEL_MAX_TOKENS = 64
CANCEL_AFTER_EVENTS = 3
SNIPPET_CHARS = 300
EXAMPLES_KEPT = 20
IDLE_TIMEOUT_S = 60.0
# Gauges of requests in flight in the app's /metrics text: the ingress's and vLLM's.
IN_FLIGHT_GAUGES = ("llm_requests_in_flight", "num_requests_running", "num_requests_waiting")
_MIB = 1024**2


# ---- one answer, and what it means ---------------------------------------------------------


class Observed(BaseModel):
    """What the client saw of one request."""

    kind: Kind
    stream: bool = False
    status: int | None = None
    retry_after: str | None = None
    body: Any = Field(None, description="The parsed JSON body (not for a 2xx stream).")
    text: str = Field("", description="The start of the raw body, for reports.")
    events: list[Any] = Field(
        default_factory=list, description="A stream's data events, parsed; `[DONE]` not among them."
    )
    done: bool = Field(False, description="The stream ended with `data: [DONE]`.")
    cancelled: bool = Field(False, description="The client cut the stream on purpose.")
    transport_error: str | None = None


class Verdict(BaseModel):
    outcome: Outcome
    reason: str = ""


def is_openai_error(body: Any) -> bool:
    """Whether `body` is exactly `{"error": {message, type, param, code}}`, message and type
    strings, param and code strings or null."""
    if not isinstance(body, dict) or set(body) != {"error"}:
        return False
    error = body["error"]
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
        return False
    return (
        isinstance(error["message"], str)
        and bool(error["message"])
        and isinstance(error["type"], str)
        and all(
            error[field] is None or isinstance(error[field], str) for field in ("param", "code")
        )
    )


def classify(observed: Observed) -> Verdict:
    """Whether an answer is what its kind of request should get, and which class it is."""
    if observed.transport_error is not None:
        return Verdict(outcome="unexpected", reason=f"transport: {observed.transport_error}")
    status = observed.status or 0
    if status >= 500:
        return Verdict(outcome="unexpected", reason=f"server error {status}")
    expected = EXPECTED_ERRORS.get(observed.kind)
    if expected is not None:
        return _check_error(observed, expected, "expected_error")
    if observed.kind == "greedy" and status == RATE_LIMITED.status:
        verdict = _check_error(observed, RATE_LIMITED, "rate_limited")
        if verdict.outcome != "unexpected" and not _retry_after_ok(observed.retry_after):
            return Verdict(outcome="unexpected", reason=f"Retry-After {observed.retry_after!r}")
        return verdict
    if status != 200:
        return Verdict(outcome="unexpected", reason=f"status {status}, expected 200")
    return _check_stream(observed) if observed.stream else _check_completion(observed)


def _check_error(observed: Observed, expected: ExpectedError, outcome: Outcome) -> Verdict:
    if observed.status != expected.status:
        return Verdict(
            outcome="unexpected", reason=f"status {observed.status}, expected {expected.status}"
        )
    if not is_openai_error(observed.body):
        return Verdict(outcome="unexpected", reason="not an OpenAI error body")
    error = observed.body["error"]
    if error["type"] != expected.type or expected.code not in (None, error["code"]):
        return Verdict(
            outcome="unexpected",
            reason=f"type/code {error['type']}/{error['code']}, "
            f"expected {expected.type}/{expected.code}",
        )
    return Verdict(outcome=outcome)


def _retry_after_ok(value: str | None) -> bool:
    return value is not None and value.isdigit() and int(value) >= 1


def _check_completion(observed: Observed) -> Verdict:
    body = observed.body
    if not (isinstance(body, dict) and body.get("choices") and isinstance(body.get("usage"), dict)):
        return Verdict(outcome="unexpected", reason="200 without choices and usage")
    return Verdict(outcome="success")


def _check_stream(observed: Observed) -> Verdict:
    for event in observed.events:
        if not isinstance(event, dict):
            return Verdict(outcome="unexpected", reason="an event that is not a JSON object")
        if "error" in event:
            return Verdict(outcome="unexpected", reason=f"error event: {event['error']}")
    if observed.cancelled:
        return Verdict(outcome="cancelled")
    if not observed.done:
        return Verdict(outcome="unexpected", reason="stream cut without [DONE]")
    return Verdict(outcome="success")


def completion_tokens(observed: Observed) -> int:
    """The completion tokens a finished answer reports in its usage (a stream's last chunk,
    with `stream_options.include_usage`); 0 without usage."""
    sources = [observed.body] if not observed.stream else observed.events[::-1]
    for source in sources:
        if isinstance(source, dict) and isinstance(source.get("usage"), dict):
            return int(source["usage"].get("completion_tokens") or 0)
    return 0


# ---- memory -----------------------------------------------------------------------------


class ProcessRSS(BaseModel):
    role: str
    pid: int
    rss_mib: float


class MemorySample(BaseModel):
    t_s: float = Field(description="Seconds since the soak's traffic started.")
    processes: dict[str, ProcessRSS] = Field(description="By label: `<role>:<pid>`.")


class Growth(BaseModel):
    role: str
    pid: int
    first_t_s: float
    last_t_s: float
    first_mib: float
    last_mib: float
    growth_mib: float
    growth_mib_per_hour: float | None


def role_of(cmdline: str, app: str) -> str | None:
    """Which of the app's processes a command line (process title) is, or None."""
    replicas = {
        INGRESS_DEPLOYMENT: "ingress",
        LLM_SERVER_DEPLOYMENT: "llm_server",
        RATE_LIMITER_DEPLOYMENT: "rate_limiter",
    }
    for deployment, role in replicas.items():
        if f"ServeReplica:{app}:{deployment}" in cmdline:
            return role
    if "EngineCore" in cmdline:
        return "engine_core"
    if "VLLM::Worker" in cmdline:
        return "engine_worker"
    if cmdline.split(" ", 1)[0].rsplit("/", 1)[-1] == "haproxy":
        return "haproxy"
    return None


def sample_processes(root_pid: int, app: str, t_s: float) -> MemorySample:
    """The RSS of the app's processes among `root_pid`'s descendants."""
    processes = {}
    for process in psutil.Process(root_pid).children(recursive=True):
        try:
            role = role_of(" ".join(process.cmdline()), app)
            if role is not None:
                rss = process.memory_info().rss
                processes[f"{role}:{process.pid}"] = ProcessRSS(
                    role=role, pid=process.pid, rss_mib=round(rss / _MIB, 1)
                )
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return MemorySample(t_s=round(t_s, 1), processes=dict(sorted(processes.items())))


def memory_growth(samples: Sequence[MemorySample], warmup_s: float) -> dict[str, Growth]:
    """Each process's RSS change from its first sample at or after `warmup_s` (its first
    sample at all when it has none after) to its last sample."""
    growth: dict[str, Growth] = {}
    labels = {label for sample in samples for label in sample.processes}
    for label in sorted(labels):
        seen = [(s.t_s, s.processes[label]) for s in samples if label in s.processes]
        after = [item for item in seen if item[0] >= warmup_s] or seen
        (t0, first), (t1, last) = after[0], after[-1]
        change = last.rss_mib - first.rss_mib
        growth[label] = Growth(
            role=first.role,
            pid=first.pid,
            first_t_s=t0,
            last_t_s=t1,
            first_mib=first.rss_mib,
            last_mib=last.rss_mib,
            growth_mib=round(change, 1),
            growth_mib_per_hour=round(change * 3600 / (t1 - t0), 1) if t1 > t0 else None,
        )
    return growth


def came_and_went(samples: Sequence[MemorySample]) -> tuple[list[str], list[str]]:
    """Processes that appeared after the first sample, and those gone before the last: a
    replica or engine replaced during the soak."""
    if not samples:
        return [], []
    first, last = set(samples[0].processes), set(samples[-1].processes)
    labels = {label for sample in samples for label in sample.processes}
    return sorted(labels - first), sorted(labels - last)


# ---- counting ---------------------------------------------------------------------------


class Record(BaseModel):
    kind: Kind
    start_s: float
    end_s: float
    status: int | None
    outcome: Outcome
    reason: str
    completion_tokens: int


def per_window(
    records: Sequence[Record], width_s: float, duration_s: float
) -> list[dict[str, float]]:
    """Answers per window of `width_s` by outcome, placed by the time they ended."""
    windows = max(1, math.ceil(duration_s / width_s))
    counts = [Counter[str]() for _ in range(windows)]
    for record in records:
        counts[min(windows - 1, max(0, int(record.end_s // width_s)))][record.outcome] += 1
    return [
        {"start_s": i * width_s, **{outcome: count[outcome] for outcome in OUTCOMES}}
        for i, count in enumerate(counts)
    ]


def admitted_bound(requests_per_minute: int, duration_s: float) -> float:
    """The most requests a client may be admitted in `duration_s` under a requests-per-minute
    limit: a full bucket, then its refill."""
    return requests_per_minute * (1 + duration_s / 60)


def in_flight(metrics_text: str) -> dict[str, float]:
    """The sums of the in-flight gauges in Prometheus text, by gauge (only those present)."""
    sums: dict[str, float] = defaultdict(float)
    for line in metrics_text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        gauge = next((g for g in IN_FLIGHT_GAUGES if name.endswith(g)), None)
        if gauge is not None:
            sums[name] += float(line.rsplit(" ", 1)[1])
    return dict(sums)


# ---- the client ---------------------------------------------------------------------------


class Client:
    """Sends one request of a kind and reports what it saw."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, model: str, keys: Mapping[str, str]
    ) -> None:
        self.session, self.base_url, self.model, self.keys = session, base_url, model, keys

    def request(self, kind: Kind, rng: random.Random) -> tuple[str, dict[str, str], Any, bool]:
        """(route, headers, body (bytes, or JSON), streamed) of one request of `kind`."""
        headers = {"Authorization": f"Bearer {self.keys['steady']}"}
        max_tokens = rng.randint(*MAX_TOKENS)
        chat = {
            "model": self.model,
            "messages": [{"role": "user", "content": rng.choice(QUESTIONS)}],
            "max_tokens": max_tokens,
        }
        completion = {"model": self.model, "prompt": rng.choice(PROMPTS), "max_tokens": max_tokens}
        usage = {"stream": True, "stream_options": {"include_usage": True}}
        match kind:
            case "chat":
                return "/v1/chat/completions", headers, chat, False
            case "chat_stream":
                return "/v1/chat/completions", headers, chat | usage, True
            case "completion":
                return "/v1/completions", headers, completion, False
            case "completion_stream":
                return "/v1/completions", headers, completion | usage, True
            case "cancelled_stream":
                long = {"max_tokens": CANCEL_MAX_TOKENS, "ignore_eos": True, "stream": True}
                return "/v1/completions", headers, completion | long, True
            case "invalid_json":
                return "/v1/chat/completions", headers, b'{"model": "x", "messages": [', False
            case "unknown_model":
                return "/v1/chat/completions", headers, chat | {"model": "no-such-model"}, False
            case "negative_max_tokens":
                return "/v1/completions", headers, completion | {"max_tokens": -5}, False
            case "missing_key":
                return "/v1/chat/completions", {}, chat, False
            case "greedy":
                streamed = rng.random() < 0.5
                greedy = {"Authorization": f"Bearer {self.keys['greedy']}"}
                return "/v1/chat/completions", greedy, chat | (usage if streamed else {}), streamed
        raise ValueError(kind)

    async def send(self, kind: Kind, rng: random.Random) -> Observed:
        route, headers, body, streamed = self.request(kind, rng)
        observed = Observed(kind=kind, stream=streamed)
        if isinstance(body, bytes):
            post = {"data": body, "headers": headers | {"Content-Type": "application/json"}}
        else:
            post = {"json": body, "headers": headers}
        try:
            async with self.session.post(self.base_url + route, **post) as response:
                observed.status = response.status
                observed.retry_after = response.headers.get("Retry-After")
                if streamed and response.status == 200:
                    await self._read_stream(response, observed, kind == "cancelled_stream")
                else:
                    raw = await response.read()
                    observed.text = raw[:SNIPPET_CHARS].decode(errors="replace")
                    try:
                        observed.body = json.loads(raw)
                    except ValueError:
                        observed.body = None
        except (aiohttp.ClientError, TimeoutError) as exc:
            observed.transport_error = f"{type(exc).__name__}: {exc}"
        return observed

    @staticmethod
    async def _read_stream(
        response: aiohttp.ClientResponse, observed: Observed, cancel: bool
    ) -> None:
        async for line in response.content:
            if not line.startswith(b"data:"):
                continue
            data = line[len(b"data:") :].strip()
            if observed.done:
                observed.events.append("data after [DONE]")
                continue
            if data == b"[DONE]":
                observed.done = True
                continue
            try:
                observed.events.append(json.loads(data))
            except ValueError:
                observed.events.append(data[:SNIPPET_CHARS].decode(errors="replace"))
            if cancel and len(observed.events) >= CANCEL_AFTER_EVENTS:
                observed.cancelled = True
                response.close()
                return


class Soak:
    """The run's traffic, its records and its memory samples."""

    def __init__(self, client: Client, args: argparse.Namespace, app: str) -> None:
        self.client, self.args, self.app = client, args, app
        self.records: list[Record] = []
        self.examples: list[dict[str, Any]] = []
        self.samples: list[MemorySample] = []
        self.start = 0.0

    def now(self) -> float:
        return time.monotonic() - self.start

    async def one(self, kind: Kind, rng: random.Random) -> None:
        start_s = self.now()
        observed = await self.client.send(kind, rng)
        verdict = classify(observed)
        record = Record(
            kind=kind,
            start_s=round(start_s, 3),
            end_s=round(self.now(), 3),
            status=observed.status,
            outcome=verdict.outcome,
            reason=verdict.reason,
            completion_tokens=completion_tokens(observed) if verdict.outcome == "success" else 0,
        )
        self.records.append(record)
        if verdict.outcome == "unexpected":
            print(f"UNEXPECTED {kind} at {start_s:.1f}s: {verdict.reason}", flush=True)
            if len(self.examples) < EXAMPLES_KEPT:
                self.examples.append(
                    record.model_dump()
                    | {
                        "body": observed.text,
                        "retry_after": observed.retry_after,
                        "events": [str(e)[:SNIPPET_CHARS] for e in observed.events[-3:]],
                    }
                )

    async def steady_worker(self, index: int, deadline: float) -> None:
        rng = random.Random(self.args.seed * 1000 + index)
        kinds, weights = list(MIX), list(MIX.values())
        while self.now() < deadline:
            await self.one(rng.choices(kinds, weights)[0], rng)
            await asyncio.sleep(rng.uniform(0, self.args.think_s))

    async def greedy_worker(self, deadline: float) -> None:
        """A request every `--greedy-interval-s` whether or not the earlier ones are answered
        (at most `--greedy-in-flight` at once), so that the key asks far more than its limit."""
        rng = random.Random(self.args.seed * 1000 - 1)
        slots = asyncio.Semaphore(self.args.greedy_in_flight)
        sent: set[asyncio.Task[None]] = set()

        async def send() -> None:
            try:
                await self.one("greedy", rng)
            finally:
                slots.release()

        while self.now() < deadline:
            await slots.acquire()
            if self.now() >= deadline:
                slots.release()
                break
            sent.add(asyncio.create_task(send()))
            await asyncio.sleep(self.args.greedy_interval_s)
        await asyncio.gather(*sent)

    async def sampler(self, stop: asyncio.Event) -> None:
        while True:
            sample = await asyncio.to_thread(sample_processes, os.getpid(), self.app, self.now())
            self.samples.append(sample)
            try:
                await asyncio.wait_for(stop.wait(), self.args.sample_every_s)
                return
            except TimeoutError:
                continue

    async def run(self) -> float:
        """The traffic until `--duration-s`, then until the last answers are in: its seconds."""
        self.start = time.monotonic()
        stop = asyncio.Event()
        sampler = asyncio.create_task(self.sampler(stop))
        deadline = self.args.duration_s
        workers = [self.steady_worker(i, deadline) for i in range(self.args.workers)]
        await asyncio.gather(*workers, self.greedy_worker(deadline))
        wall_s = self.now()
        stop.set()
        await sampler
        self.samples.append(
            await asyncio.to_thread(sample_processes, os.getpid(), self.app, wall_s)
        )
        return wall_s


async def warm_up(client: Client) -> None:
    """A few answers before the soak, so first-request set-up is not in it."""
    rng = random.Random(0)
    for kind in ("chat", "completion", "chat_stream", "completion_stream"):
        verdict = classify(await client.send(kind, rng))
        if verdict.outcome != "success":
            raise RuntimeError(f"warm-up {kind} failed: {verdict.reason}")


async def wait_idle(client: Client) -> dict[str, Any]:
    """The app's in-flight gauges once they all read 0, or their last reading after
    IDLE_TIMEOUT_S (metrics reach /metrics some seconds late)."""
    url = f"{client.base_url}/metrics"
    headers = {"Authorization": f"Bearer {client.keys['steady']}"}
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while True:
        async with client.session.get(url, headers=headers) as response:
            gauges = in_flight(await response.text())
        idle = all(value == 0 for value in gauges.values())
        if idle or time.monotonic() > deadline:
            return {"idle": idle, "gauges": gauges}
        await asyncio.sleep(2)


async def drive(
    base_url: str, model: str, keys: Mapping[str, str], args: argparse.Namespace, app: str
) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=args.request_timeout_s)
    connector = aiohttp.TCPConnector(limit=args.workers + args.greedy_in_flight + 1)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        client = Client(session, base_url, model, keys)
        await warm_up(client)
        soak = Soak(client, args, app)
        print(f"soak: {args.duration_s:.0f} s, {args.workers} steady workers + greedy", flush=True)
        wall_s = await soak.run()
        after = await wait_idle(client)
    return summarise(soak, wall_s, after)


# ---- the report ---------------------------------------------------------------------------


def summarise(soak: Soak, wall_s: float, after: dict[str, Any]) -> dict[str, Any]:
    args, records = soak.args, soak.records
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    statuses: dict[str, Counter[str]] = defaultdict(Counter)
    for record in records:
        by_kind[record.kind][record.outcome] += 1
        statuses[record.kind][str(record.status)] += 1
    counts = Counter(record.outcome for record in records)
    tokens = sum(record.completion_tokens for record in records)
    generated = counts["success"] + counts["cancelled"]
    greedy = by_kind["greedy"]
    bound = admitted_bound(args.greedy_rpm, wall_s)
    growth = memory_growth(soak.samples, args.warmup_s)
    appeared, gone = came_and_went(soak.samples)
    failures = []
    if counts["unexpected"]:
        failures.append(f"{counts['unexpected']} unexpected answers")
    if greedy["success"] > bound:
        failures.append(f"greedy admitted {greedy['success']} > {bound:.0f} under its limit")
    if not greedy["rate_limited"]:
        failures.append("greedy was never refused (429)")
    if not after["idle"]:
        failures.append(f"requests left in flight after the soak: {after['gauges']}")
    return {
        "settings": {
            "duration_s": args.duration_s,
            "workers": args.workers,
            "think_s": args.think_s,
            "mix": MIX,
            "max_tokens": list(MAX_TOKENS),
            "cancel_after_events": CANCEL_AFTER_EVENTS,
            "greedy_requests_per_minute": args.greedy_rpm,
            "greedy_interval_s": args.greedy_interval_s,
            "greedy_in_flight": args.greedy_in_flight,
            "warmup_s": args.warmup_s,
            "sample_every_s": args.sample_every_s,
            "request_timeout_s": args.request_timeout_s,
            "seed": args.seed,
        },
        "wall_s": round(wall_s, 1),
        "requests": len(records),
        "counts": {outcome: counts[outcome] for outcome in OUTCOMES},
        "counts_by_kind": {kind: dict(by_kind[kind]) for kind in sorted(by_kind)},
        "statuses_by_kind": {kind: dict(statuses[kind]) for kind in sorted(statuses)},
        "unexpected": counts["unexpected"],
        "unexpected_examples": soak.examples,
        "throughput": {
            "requests_per_s": round(len(records) / wall_s, 3),
            "generation_requests_per_s": round(generated / wall_s, 3),
            "completion_tokens": tokens,
            "tokens_per_s": round(tokens / wall_s, 2),
        },
        "latency_s": latency_by_kind(records),
        "rate_limit": {
            "greedy_requests_per_minute": args.greedy_rpm,
            "admitted": greedy["success"],
            "refused": greedy["rate_limited"],
            "admitted_bound": round(bound, 1),
        },
        "after_soak": after,
        "memory": {
            "growth": {label: g.model_dump() for label, g in growth.items()},
            "appeared_during_soak": appeared,
            "gone_during_soak": gone,
            "samples": [sample.model_dump() for sample in soak.samples],
        },
        "windows": per_window(records, args.sample_every_s, wall_s),
        "failures": failures,
    }


def latency_by_kind(records: Sequence[Record]) -> dict[str, dict[str, float]]:
    """p50 / p90 / max seconds of each kind's expected answers."""
    seconds: dict[str, list[float]] = defaultdict(list)
    for record in records:
        if record.outcome in EXPECTED_OUTCOMES:
            seconds[record.kind].append(record.end_s - record.start_s)
    result = {}
    for kind, values in sorted(seconds.items()):
        cuts = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else values
        result[kind] = {
            "p50": round(statistics.median(values), 3),
            "p90": round(cuts[-1], 3),
            "max": round(max(values), 3),
        }
    return result


COLOURS = {
    "success": "#4c72b0",
    "cancelled": "#8172b2",
    "expected_error": "#dd8452",
    "rate_limited": "#ccb974",
    "unexpected": "#c44e52",
}


def plot(report: dict[str, Any], path: Path) -> None:
    """RSS per process over time, its change since the warm-up, answers per window."""
    memory, samples = report["memory"], report["memory"]["samples"]
    warmup_s = report["settings"]["warmup_s"]
    with figure(path, 3, 1, figsize=(11, 11), sharex=True) as (fig, (rss, change, answers)):
        for label, growth in memory["growth"].items():
            ts, values = zip(*_series(samples, label), strict=True)
            rss.plot(ts, values, marker=".", label=label)
            change.plot(ts, [v - growth["first_mib"] for v in values], marker=".", label=label)
        rss.set_yscale("log")
        rss.set_ylabel("RSS (MiB, log)")
        rss.legend(fontsize=7, ncol=2)
        change.set_ylabel("RSS change since the warm-up (MiB)")
        change.axhline(0, color="grey", linewidth=0.5)
        for ax in (rss, change):
            ax.axvline(warmup_s, color="black", linestyle=":", linewidth=0.8)
        width = report["settings"]["sample_every_s"]
        bottom = [0.0] * len(report["windows"])
        starts = [w["start_s"] + width / 2 for w in report["windows"]]
        for outcome in OUTCOMES:
            heights = [w[outcome] for w in report["windows"]]
            answers.bar(
                starts, heights, width * 0.9, bottom=bottom, label=outcome, color=COLOURS[outcome]
            )
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        answers.set_ylabel(f"answers per {width:.0f} s")
        answers.set_xlabel("seconds since the soak started")
        answers.set_ylim(0, 1.3 * max(bottom, default=0) + 1)  # room for the legend
        answers.legend(fontsize=8, ncol=len(OUTCOMES), loc="upper left")
        throughput = report["throughput"]
        fig.suptitle(
            f"Soak, {report['wall_s']:.0f} s: {report['requests']} requests "
            f"({report['unexpected']} unexpected), {throughput['requests_per_s']:.2f} req/s, "
            f"{throughput['tokens_per_s']:.1f} completion tok/s"
        )


def _series(samples: Sequence[Mapping[str, Any]], label: str) -> list[tuple[float, float]]:
    return [
        (s["t_s"], s["processes"][label]["rss_mib"]) for s in samples if label in s["processes"]
    ]


# ---- command ----------------------------------------------------------------------------


@contextmanager
def api_keys_env(keys: Mapping[str, str]) -> Iterator[None]:
    """`API_KEYS=name:key,...` in this process's environment (which our app's Ray inherits)
    while the block runs."""
    before = os.environ.get(ENV_API_KEYS)
    os.environ[ENV_API_KEYS] = ",".join(f"{name}:{key}" for name, key in keys.items())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_API_KEYS, None)
        else:
            os.environ[ENV_API_KEYS] = before


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    add_engine_args(parser)
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--workers", type=int, default=6, help="steady clients")
    parser.add_argument("--think-s", type=float, default=0.5, help="pause, up to, between sends")
    parser.add_argument("--greedy-rpm", type=int, default=6, help="greedy's requests per minute")
    parser.add_argument("--greedy-interval-s", type=float, default=1.0)
    parser.add_argument("--greedy-in-flight", type=int, default=2)
    parser.add_argument("--warmup-s", type=float, default=60.0, help="memory growth from here")
    parser.add_argument("--sample-every-s", type=float, default=10.0)
    parser.add_argument("--request-timeout-s", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, help="default: benchmarks/results/<machine>/<date>-soak"
    )
    parser.add_argument("--log", type=Path, help="the app's output; default: a temporary file")
    args = parser.parse_args(argv)
    args.out = args.out or default_out("soak")
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.log or Path(tempfile.mkdtemp(prefix="soak-")) / "ours.log"
    setup = engine_setup_from_args(args)
    limits = {"per_key": {"greedy": {"requests_per_minute": args.greedy_rpm}}}
    options = OurAppOptions(app_args={**args.app_args, "rate_limits": limits})
    config = our_config(setup, options)
    app = config.applications[0].name
    report: dict[str, Any] = {
        **provenance(MODULE, argv, config.applications[0].args),
        "engine": setup.model_dump(exclude={"model", "tokenizer"}),
    }
    keys = {name: f"sk-{name}-{secrets.token_hex(12)}" for name in ("steady", "greedy")}
    print(f"starting our app (log: {log})", flush=True)
    with (
        api_keys_env(keys),
        our_app(setup, options, log, Path(tempfile.mkdtemp())) as startup_s,
    ):
        report["startup_s"] = round(startup_s, 1)
        base_url = f"http://127.0.0.1:{OURS_PORT}"
        report |= asyncio.run(drive(base_url, setup.served_model_name, keys, args, app))
    (args.out / "soak.json").write_text(json.dumps(report, indent=2))
    plot(report, args.out / "soak.png")
    print_summary(report)
    print(args.out / "soak.json")
    return 1 if report["failures"] else 0


def print_summary(report: Mapping[str, Any]) -> None:
    throughput = report["throughput"]
    print(
        f"{report['requests']} requests in {report['wall_s']} s: {report['counts']}; "
        f"{throughput['requests_per_s']} req/s, {throughput['tokens_per_s']} tok/s",
        flush=True,
    )
    for label, growth in report["memory"]["growth"].items():
        print(f"  {label}: {growth['first_mib']} -> {growth['last_mib']} MiB "
              f"({growth['growth_mib']:+} MiB)")  # fmt: skip
    for failure in report["failures"]:
        print(f"FAILED: {failure}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
