"""Whether one client's huge prompt stalls the other clients' streams.

A victim streams a long completion while other clients send prompts far beyond the model's
context, which a server has to tokenize before it can refuse them (400). Whatever time the
server spends on that in the event loop that also relays the victim's chunks shows up as
gaps in the victim's stream. This measures the victim's inter-chunk gaps alone and under
that flood, on our app and on bare vLLM, started one after the other with the same engine
arguments (the stacks of `benchmarks.lib.serving_stacks`). The flood's clients run in a process of
their own, so their client-side work (encoding each oversized body) cannot delay the
victim's reads.

    python -m benchmarks.serving.loop_stall [--stacks ours bare] [--prompt-words 40000]
        [--flood-concurrency 2] [--max-tokens 256] [--repeats 3] [--warmups 4]
        [--out benchmarks/results/cpu/2026-11-29-loop-stall]

Writes `loop_stall.json` and `loop_stall.png` under `--out`.
"""

import argparse
import asyncio
import itertools
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from multiprocessing.queues import SimpleQueue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Literal, get_args

import aiohttp
from pydantic import BaseModel

from benchmarks.lib.report import default_out, figure, provenance
from benchmarks.lib.serving_stacks import (
    BARE_PORT,
    OURS_PORT,
    OurAppOptions,
    add_engine_args,
    bare_vllm,
    engine_setup_from_args,
    openai_flags,
    our_app,
    our_config,
)

MODULE = "benchmarks.serving.loop_stall"

Stack = Literal["ours", "bare"]
PhaseName = Literal["alone", "oversized prompts"]
VICTIM_PROMPT = "Once upon a time"
FLOOD_WORD = "lorem "
TIMEOUT = aiohttp.ClientTimeout(total=600)
WARMUP_TOKENS = 32


class Phase(BaseModel):
    """The victim's stream over all repeats of one phase, and the flood sent meanwhile."""

    name: PhaseName
    gap_ms: dict[str, float]
    victim_chunks_per_s: float  # SSE events; one holds several tokens when paced
    flood_requests: int
    flood_statuses: dict[str, int]
    flood_latency_p50_ms: float | None


class StackStall(BaseModel):
    name: Stack
    startup_s: float
    phases: list[Phase]


async def victim(session: aiohttp.ClientSession, url: str, model: str, tokens: int) -> list[float]:
    """Arrival times of a streamed completion's events (the first one is its first token)."""
    body = {
        "model": model,
        "prompt": VICTIM_PROMPT,
        "max_tokens": tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
    }
    arrivals: list[float] = []
    async with session.post(f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.content:
            if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
                arrivals.append(time.perf_counter())
    return arrivals


async def warm_up(url: str, model: str, streams: int) -> None:
    """Short streams first, so no first-request setup lands in a measured gap."""
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        for _ in range(streams):
            await victim(session, url, model, WARMUP_TOKENS)


async def flood(
    session: aiohttp.ClientSession, url: str, model: str, prompt: str, stop: Event
) -> list[tuple[int, float]]:
    """Oversized completions one after the other until `stop`: (status, seconds) each."""
    sent: list[tuple[int, float]] = []
    body = {"model": model, "prompt": prompt, "max_tokens": 1}
    while not stop.is_set():
        start = time.perf_counter()
        async with session.post(f"{url}/v1/completions", json=body) as response:
            await response.read()
        sent.append((response.status, time.perf_counter() - start))
    return sent


def flood_process(
    url: str,
    model: str,
    prompt: str,
    clients: int,
    ready: Event,
    stop: Event,
    results: "SimpleQueue[list[tuple[int, float]]]",
) -> None:
    """`clients` floods at once until `stop`, in a process of their own; their sends go to
    `results`. `ready` is set once they can send."""

    async def run() -> list[tuple[int, float]]:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            ready.set()
            sent = await asyncio.gather(
                *(flood(session, url, model, prompt, stop) for _ in range(clients))
            )
        return [item for each in sent for item in each]

    results.put(asyncio.run(run()))


async def flooded_victim(
    url: str, model: str, prompt: str, clients: int, tokens: int
) -> tuple[list[float], list[tuple[int, float]]]:
    """The victim's arrivals while `clients` other clients (another process) flood the server."""
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    results: SimpleQueue[list[tuple[int, float]]] = context.SimpleQueue()
    args = (url, model, prompt, clients, ready, stop, results)
    process = context.Process(target=flood_process, args=args)
    process.start()
    try:
        await asyncio.to_thread(ready.wait)
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            arrivals = await victim(session, url, model, tokens)
    finally:
        stop.set()
    sent = await asyncio.to_thread(results.get)
    process.join()
    return arrivals, sent


async def measure_phase(url: str, model: str, name: PhaseName, args: argparse.Namespace) -> Phase:
    gaps: list[float] = []
    rates: list[float] = []
    flooded: list[tuple[int, float]] = []
    prompt = FLOOD_WORD * args.prompt_words
    flooders = args.flood_concurrency if name == "oversized prompts" else 0
    for _ in range(args.repeats):
        if flooders:
            arrivals, sent = await flooded_victim(url, model, prompt, flooders, args.max_tokens)
            flooded += sent
        else:
            async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
                arrivals = await victim(session, url, model, args.max_tokens)
        gaps += [b - a for a, b in itertools.pairwise(arrivals)]
        rates.append((len(arrivals) - 1) / (arrivals[-1] - arrivals[0]))
    return Phase(
        name=name,
        gap_ms=_percentiles_ms(gaps),
        victim_chunks_per_s=round(statistics.median(rates), 1),
        flood_requests=len(flooded),
        flood_statuses=dict(Counter(str(status) for status, _ in flooded)),
        flood_latency_p50_ms=(
            round(1000 * statistics.median(s for _, s in flooded), 1) if flooded else None
        ),
    )


def _percentiles_ms(values: Sequence[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "p50": round(1000 * cuts[49], 2),
        "p99": round(1000 * cuts[98], 2),
        "max": round(1000 * max(values), 2),
    }


def plot(stacks: Sequence[StackStall], path: Path) -> None:
    stats = ("p50", "p99", "max")
    with figure(
        path, 1, len(stacks), figsize=(6 * len(stacks), 4.2), squeeze=False, sharey=True
    ) as (
        fig,
        axes,
    ):
        for ax, stack in zip(axes[0], stacks, strict=True):
            width = 0.8 / len(stack.phases)
            for i, phase in enumerate(stack.phases):
                xs = [j + i * width for j in range(len(stats))]
                ax.bar(xs, [phase.gap_ms[s] for s in stats], width, label=phase.name)
            ax.set_xticks([j + width * (len(stack.phases) - 1) / 2 for j in range(len(stats))])
            ax.set_xticklabels(stats)
            ax.set_yscale("log")
            ax.set_ylabel("victim's gap between chunks (ms)")
            ax.set_title(stack.name)
            ax.legend()
        fig.suptitle("A streaming client while others send oversized prompts")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    add_engine_args(parser)
    stacks = get_args(Stack)
    parser.add_argument("--stacks", nargs="+", choices=stacks, default=list(stacks))
    parser.add_argument("--prompt-words", type=int, default=40_000)
    parser.add_argument("--flood-concurrency", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=256, help="the victim's tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmups", type=int, default=4, help="short streams, not measured")
    parser.add_argument(
        "--out", type=Path, help="default: benchmarks/results/<machine>/<date>-loop-stall"
    )
    args = parser.parse_args(argv)
    args.out = args.out or default_out("loop-stall")
    args.out.mkdir(parents=True, exist_ok=True)
    setup = engine_setup_from_args(args)
    config = our_config(setup, OurAppOptions(app_args=args.app_args))
    report = {
        **provenance(MODULE, sys.argv[1:], config.applications[0].args),
        "engine": setup.model_dump(exclude={"model", "tokenizer"}),
        "stacks": [],
    }
    results: list[StackStall] = []
    for stack in args.stacks:
        if stack == "ours":
            options = OurAppOptions(app_args=args.app_args)
            server = our_app(setup, options, args.out / "ours.log", Path(tempfile.mkdtemp()))
            port = OURS_PORT
        else:
            flags = openai_flags(report["app_config"])
            server, port = bare_vllm(setup, args.out / "bare.log", flags=flags), BARE_PORT
        with server as startup_s:
            url = f"http://127.0.0.1:{port}"
            asyncio.run(warm_up(url, setup.served_model_name, args.warmups))
            phases = [
                asyncio.run(measure_phase(url, setup.served_model_name, name, args))
                for name in get_args(PhaseName)
            ]
        results.append(StackStall(name=stack, startup_s=round(startup_s, 1), phases=phases))
        for phase in phases:
            print(f"{stack} {phase.name}: gaps {phase.gap_ms}, {phase.flood_requests} floods")
    report["stacks"] = [result.model_dump() for result in results]
    (args.out / "loop_stall.json").write_text(json.dumps(report, indent=2))
    plot(results, args.out / "loop_stall.png")
    print(args.out / "loop_stall.json")


if __name__ == "__main__":
    main()
