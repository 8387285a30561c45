"""Routing benchmark: Ray Serve's default router against our cache-aware one
(`serve_app/routing`), on workloads that reward cache affinity (multi-tenant, multi-turn),
punish it (one hot prefix, bursts of one new prefix) or gain nothing from it (no reuse), with
several LLM replicas (`benchmarks/lib/routing_workloads.py`).

    # CPU: 2 replicas of the default model (one core each), both routers one after the other
    python -m benchmarks.serving.prefix_routing compare \\
        --out benchmarks/results/<machine>/<date>-prefix-routing

    # one H200: 2 replicas sharing it (gpu_fraction 0.5), 8B-shape dummy model; one router per
    # call of the device tool, then the report
    python -m benchmarks.serving.prefix_routing run --dummy-8b --router serve_default --out DIR
    python -m benchmarks.serving.prefix_routing run --dummy-8b --router cache_aware --out DIR
    python -m benchmarks.serving.prefix_routing report DIR

`run` writes `<out>/<router>.json`; `report` (and `compare`) writes `routing.json`,
`routing.png` and prints the table. Per workload and router: TTFT p50/p99, end-to-end p50,
output tokens/s, failures, the prefix-cache hit rate of every replica (vLLM's own counters,
`ray_vllm_prefix_cache_*` by `ReplicaId`), requests per replica (max / mean), and the cache-aware
policy's decision time per request (measured in-process on the same prompts).

The KV cache is sized (vLLM's `kv_cache_memory_bytes`) so that each replica holds about half of
the workload's prefixes: the situation of a service with more tenants and chats than one
replica's cache, where routing decides what stays cached. Engines run eager on the GPU too (two
start in about a minute instead of compiling for four): the comparison is between routers.
"""

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from benchmarks.lib import serving_stacks as stacks
from benchmarks.lib.report import detect_accelerator, figure, machine, provenance
from benchmarks.lib.routing_workloads import (
    SCALES,
    WORKLOADS,
    PlannedRequest,
    Scale,
    WorkloadName,
    plan,
)
from deployments.request_router import request_router_config
from serve_app.core.config import AppConfig
from serve_app.routing.cache_aware import CacheAwarePolicy, Candidate
from serve_app.vllm_compat import default_block_size

MODULE = "benchmarks.serving.prefix_routing"
ROUTERS = ("serve_default", "cache_aware")
# Ray reports metrics every 10 s by default; the benchmark reads them after each workload.
METRICS_INTERVAL_ENV = "RAY_metrics_report_interval_ms"
METRICS_REPORT_INTERVAL_MS = "1000"
METRICS_SETTLE_TIMEOUT_S = 20.0
# KV cache per replica: about half of the tenants' prefixes and the requests running.
KV_CACHE_BYTES = {
    "cpu": 100 * 1024**2,  # ~2.2k tokens of SmolLM2-135M in fp32 (45 KiB per token)
    "gpu": 6_000_000_000,  # ~45k tokens of the 8B shape (128 KiB per token)
}


class RequestOutcome(BaseModel):
    ok: bool
    ttft_s: float | None = None
    e2e_s: float | None = None
    output_tokens: int = 0
    start: float
    end: float


class ReplicaCounters(BaseModel):
    """vLLM's counters of one replica over a workload (deltas)."""

    prefix_cache_queries: float = 0.0
    prefix_cache_hits: float = 0.0
    requests: float = 0.0

    @property
    def hit_rate(self) -> float | None:
        if not self.prefix_cache_queries:
            return None
        return self.prefix_cache_hits / self.prefix_cache_queries


class WorkloadResult(BaseModel):
    workload: WorkloadName
    requests: int
    failed: int
    ttft_ms: dict[str, float]
    e2e_ms_p50: float
    output_tok_s: float
    hit_rate: float | None
    replicas: dict[str, dict[str, float | None]]
    max_over_mean_requests: float | None


class RouterRun(BaseModel):
    router: str
    startup_s: float
    workloads: list[WorkloadResult]


# ---- load ---------------------------------------------------------------------------------


async def _send(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    request: PlannedRequest,
    max_tokens: int,
) -> RequestOutcome:
    body = {
        "model": model,
        "prompt": request.prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"x-session-id": request.session} if request.session else {}
    start = time.perf_counter()
    first: float | None = None
    tokens = 0
    try:
        async with session.post(url, json=body, headers=headers) as response:
            if response.status != 200:
                await response.read()
                return RequestOutcome(ok=False, start=start, end=time.perf_counter())
            async for line in response.content:
                payload = line.decode().removeprefix("data: ").strip()
                if not payload or payload == "[DONE]":
                    continue
                event = json.loads(payload)
                if event.get("choices") and first is None:
                    first = time.perf_counter()
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
    except aiohttp.ClientError:
        return RequestOutcome(ok=False, start=start, end=time.perf_counter())
    end = time.perf_counter()
    ok = first is not None and tokens == max_tokens
    return RequestOutcome(
        ok=ok,
        ttft_s=None if first is None else first - start,
        e2e_s=end - start,
        output_tokens=tokens,
        start=start,
        end=end,
    )


async def run_workload(
    base_url: str, model: str, requests: Sequence[PlannedRequest], max_tokens: int
) -> list[RequestOutcome]:
    """Send every request at its time (or once the request it follows has finished)."""
    url = f"{base_url}/v1/completions"
    done: dict[int, asyncio.Event] = {i: asyncio.Event() for i in range(len(requests))}
    outcomes: list[RequestOutcome | None] = [None] * len(requests)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
    ) as session:
        began = time.perf_counter()

        async def one(index: int, request: PlannedRequest) -> None:
            if request.after is not None:
                await done[request.after].wait()
            await asyncio.sleep(max(0.0, began + request.at - time.perf_counter()))
            outcomes[index] = await _send(session, url, model, request, max_tokens)
            done[index].set()

        await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
    return [outcome for outcome in outcomes if outcome is not None]


# ---- vLLM's counters per replica ------------------------------------------------------------


COUNTERS = {
    "ray_vllm_prefix_cache_queries": "prefix_cache_queries",
    "ray_vllm_prefix_cache_hits": "prefix_cache_hits",
    "ray_vllm_request_success": "requests",
}


async def read_counters(base_url: str) -> dict[str, ReplicaCounters]:
    """vLLM's counters of every LLM replica, from the app's /metrics (Prometheus text)."""
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/metrics") as response:
        text = await response.text()
    replicas: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        field = COUNTERS.get(family.name)
        if field is None:
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            replica = sample.labels.get("ReplicaId", "")
            counters = replicas.setdefault(replica, {})
            counters[field] = counters.get(field, 0.0) + sample.value
    return {replica: ReplicaCounters(**values) for replica, values in replicas.items()}


def counter_deltas(
    before: Mapping[str, ReplicaCounters], after: Mapping[str, ReplicaCounters]
) -> dict[str, ReplicaCounters]:
    deltas = {}
    for replica, counters in after.items():
        base = before.get(replica, ReplicaCounters())
        deltas[replica] = ReplicaCounters(
            **{
                field: getattr(counters, field) - getattr(base, field)
                for field in ReplicaCounters.model_fields
            }
        )
    return deltas


async def settled_counters(
    base_url: str, before: Mapping[str, ReplicaCounters], finished: int
) -> dict[str, ReplicaCounters]:
    """The deltas once every finished request shows in the counters (Ray reports them late)."""
    deadline = time.monotonic() + METRICS_SETTLE_TIMEOUT_S
    while True:
        deltas = counter_deltas(before, await read_counters(base_url))
        seen = sum(counters.requests for counters in deltas.values())
        if seen >= finished or time.monotonic() > deadline:
            return deltas
        await asyncio.sleep(0.5)


# ---- summaries ----------------------------------------------------------------------------


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarise(
    name: WorkloadName,
    outcomes: Sequence[RequestOutcome],
    replicas: Mapping[str, ReplicaCounters],
) -> WorkloadResult:
    ok = [outcome for outcome in outcomes if outcome.ok]
    ttfts = [1000 * outcome.ttft_s for outcome in ok if outcome.ttft_s is not None]
    span = max(o.end for o in outcomes) - min(o.start for o in outcomes)
    queries = sum(counters.prefix_cache_queries for counters in replicas.values())
    hits = sum(counters.prefix_cache_hits for counters in replicas.values())
    loads = [counters.requests for counters in replicas.values()]
    mean_load = statistics.fmean(loads) if loads else 0.0
    return WorkloadResult(
        workload=name,
        requests=len(outcomes),
        failed=len(outcomes) - len(ok),
        ttft_ms={
            "p50": round(_percentile(ttfts, 0.5), 1) if ttfts else float("nan"),
            "p99": round(_percentile(ttfts, 0.99), 1) if ttfts else float("nan"),
        },
        e2e_ms_p50=round(1000 * statistics.median(o.e2e_s for o in ok if o.e2e_s), 1)
        if ok
        else float("nan"),
        output_tok_s=round(sum(o.output_tokens for o in ok) / span, 1),
        hit_rate=round(hits / queries, 4) if queries else None,
        replicas={
            replica: {
                "requests": counters.requests,
                "hit_rate": None if counters.hit_rate is None else round(counters.hit_rate, 4),
            }
            for replica, counters in sorted(replicas.items())
        },
        max_over_mean_requests=round(max(loads) / mean_load, 3) if mean_load else None,
    )


def decision_time_us(scale: Scale, replicas: int, block_tokens: int, seed: int) -> dict[str, float]:
    """The cache-aware policy's time per request (key, rank, remember), on this workload set
    with `replicas` replicas of random load, measured in this process."""
    shipped = request_router_config(AppConfig(), "gpu").request_router_kwargs
    policy = CacheAwarePolicy(**(shipped | {"block_tokens": block_tokens}))
    rng = random.Random(seed)
    times = []
    for name in WORKLOADS:
        for request in plan(name, scale, seed):
            loads = [Candidate(f"r{i}", rng.randrange(8)) for i in range(replicas)]
            start = time.perf_counter()
            key = policy.key(request.prompt, request.session)
            policy.routed(policy.rank(loads, key)[0], key)
            times.append(1e6 * (time.perf_counter() - start))
    return {"p50": round(_percentile(times, 0.5), 1), "p99": round(_percentile(times, 0.99), 1)}


# ---- commands -----------------------------------------------------------------------------


def app_args(accelerator: str, router: str, replicas: int) -> dict[str, Any]:
    args: dict[str, Any] = {"routing": {"router": router}}
    if accelerator == "gpu":
        args["gpu_fraction"] = round(1 / replicas, 3)
    return args


def run_router(args: argparse.Namespace, router: str) -> RouterRun:
    """Our app with `args.replicas` LLM replicas and `router`, every workload in turn."""
    accelerator = detect_accelerator()
    scale = SCALES[accelerator]
    os.environ[METRICS_INTERVAL_ENV] = METRICS_REPORT_INTERVAL_MS
    setup = stacks.engine_setup_from_args(args)
    setup.engine_kwargs |= {
        "enforce_eager": True,
        "kv_cache_memory_bytes": KV_CACHE_BYTES[accelerator],
    }
    options = stacks.OurAppOptions(
        replicas=args.replicas,
        ingress_cpus=0.0 if accelerator == "cpu" else None,
        app_args=app_args(accelerator, router, args.replicas) | args.app_args,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    base_url = f"http://127.0.0.1:{stacks.OURS_PORT}"
    results = []
    server = stacks.our_app(setup, options, args.out / f"{router}.log", Path(tempfile.mkdtemp()))
    with server as startup_s:
        for name in args.workloads:
            requests = plan(name, scale, args.seed)
            before = asyncio.run(read_counters(base_url))
            outcomes = asyncio.run(
                run_workload(base_url, setup.served_model_name, requests, scale.max_tokens)
            )
            finished = sum(outcome.ok for outcome in outcomes)
            deltas = asyncio.run(settled_counters(base_url, before, finished))
            result = summarise(name, outcomes, deltas)
            print(router, result.model_dump_json(), flush=True)
            results.append(result)
    run = RouterRun(router=router, startup_s=round(startup_s, 1), workloads=results)
    config = stacks.our_config(setup, options)
    report = {
        **provenance(MODULE, sys.argv[1:], config.applications[0].args),
        "engine": setup.model_dump(exclude={"model", "tokenizer"}),
        "replicas": args.replicas,
        "ingress_replicas": stacks.ingress_replicas(config),
        "scale": scale.model_dump(),
        "run": run.model_dump(),
    }
    (args.out / f"{router}.json").write_text(json.dumps(report, indent=2))
    return run


def report(out: Path) -> dict[str, Any]:
    """routing.json and routing.png from the routers' JSONs in `out`; the table printed."""
    runs = {
        router: json.loads((out / f"{router}.json").read_text())
        for router in ROUTERS
        if (out / f"{router}.json").exists()
    }
    head = next(iter(runs.values()))
    accelerator = "gpu" if head["machine"].get("gpu") else "cpu"
    block_tokens = head["engine"]["engine_kwargs"].get("block_size") or default_block_size(
        accelerator
    )
    rows = []
    by_router = {
        router: {w["workload"]: w for w in run["run"]["workloads"]} for router, run in runs.items()
    }
    for name in WORKLOADS:
        if not all(name in workloads for workloads in by_router.values()):
            continue
        row: dict[str, Any] = {"workload": name}
        for router, workloads in by_router.items():
            w = workloads[name]
            row |= {
                f"{router}_ttft_p50_ms": w["ttft_ms"]["p50"],
                f"{router}_ttft_p99_ms": w["ttft_ms"]["p99"],
                f"{router}_output_tok_s": w["output_tok_s"],
                f"{router}_hit_rate": w["hit_rate"],
                f"{router}_max_over_mean_requests": w["max_over_mean_requests"],
                f"{router}_failed": w["failed"],
            }
        if len(by_router) == 2:
            default, ours = (by_router[router][name] for router in ROUTERS)
            row["ttft_p50_default_over_ours"] = round(
                default["ttft_ms"]["p50"] / ours["ttft_ms"]["p50"], 3
            )
            row["throughput_ours_over_default"] = round(
                ours["output_tok_s"] / default["output_tok_s"], 3
            )
            if default["hit_rate"] and ours["hit_rate"] is not None:
                row["hit_rate_ours_over_default"] = round(ours["hit_rate"] / default["hit_rate"], 3)
        rows.append(row)
    summary = {
        "runs": {router: run["commit"] for router, run in runs.items()},
        "machine": head["machine"],
        "replicas": head["replicas"],
        # Measured where the report runs, in one process (not on the serving machine).
        "decision_time_measured_on": machine()["cpu"],
        "decision_time_us": decision_time_us(
            SCALES[accelerator], head["replicas"], block_tokens, seed=0
        ),
        "rows": rows,
    }
    (out / "routing.json").write_text(json.dumps(summary, indent=2))
    plot(rows, list(runs), out / "routing.png", f"{head['replicas']} replicas, {accelerator}")
    print(markdown_table(rows, list(runs)))
    return summary


def markdown_table(rows: Sequence[Mapping[str, Any]], routers: Sequence[str]) -> str:
    """One line per workload: each router's TTFT p50 / p99, hit rate, tokens/s, max/mean load."""
    fields = ("ttft_p50_ms", "ttft_p99_ms", "hit_rate", "output_tok_s", "max_over_mean_requests")
    head = ["workload", *(f"{router} {field}" for field in fields for router in routers)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["workload"], *(row[f"{r}_{field}"] for field in fields for r in routers)]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def plot(rows: Sequence[Mapping[str, Any]], routers: Sequence[str], path: Path, title: str) -> None:
    with figure(path, 1, 3, figsize=(15, 4.5)) as (fig, axes):
        names = [row["workload"] for row in rows]
        width = 0.8 / len(routers)
        for index, router in enumerate(routers):
            xs = [i + index * width for i in range(len(names))]
            for axis, field in zip(axes, ("ttft_p50_ms", "hit_rate", "output_tok_s"), strict=True):
                axis.bar(xs, [row[f"{router}_{field}"] or 0 for row in rows], width, label=router)
        for axis, label in zip(
            axes, ("TTFT p50 (ms)", "prefix-cache hit rate", "output tokens/s"), strict=True
        ):
            axis.set_xticks([i + width / 2 for i in range(len(names))], names, rotation=20)
            axis.set_ylabel(label)
        axes[0].set_yscale("log")  # an overloaded workload's seconds beside the others' ms
        axes[0].legend()
        fig.suptitle(f"Serve's default router vs cache-aware, {title}")


def cmd_run(args: argparse.Namespace) -> None:
    run_router(args, args.router)


def cmd_compare(args: argparse.Namespace) -> None:
    for router in ROUTERS:
        run_router(args, router)
    report(args.out)


def cmd_report(args: argparse.Namespace) -> None:
    report(args.out)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=MODULE, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(required=True)
    for name, handler in (("run", cmd_run), ("compare", cmd_compare)):
        command = commands.add_parser(name)
        stacks.add_engine_args(command)
        command.add_argument("--replicas", type=int, default=2)
        command.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
        command.add_argument("--seed", type=int, default=0)
        command.add_argument("--out", type=Path, required=True)
        if name == "run":
            command.add_argument("--router", choices=ROUTERS, required=True)
        command.set_defaults(handler=handler)
    reporting = commands.add_parser("report")
    reporting.add_argument("out", type=Path)
    reporting.set_defaults(handler=cmd_report)
    args = parser.parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
