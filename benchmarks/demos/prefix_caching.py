"""Prefix caching: a long shared context with short different questions, cache on vs off.

The RAG-like workload: one long system prompt (a block of notes) shared by every request,
then a short question of its own. Each repeat runs both settings on the same engine,
alternating, each starting from an emptied prefix cache:

- sequential: the questions one at a time (a single user's session), each request's time
  to first token; with the cache on only the first computes the shared context;
- burst: all questions at once, output tokens per second and requests per second.

"Off" is the per-request switch `skip_reading_prefix_cache`: the engine computes the whole
prompt of such a request even when its prefix is cached, as an engine started with
`enable_prefix_caching=False` would, so both settings share one engine start and the same
machine conditions. Each request's `num_cached_tokens` (prompt tokens served from the cache)
is recorded to show the switch did what it says.

    python -m benchmarks.demos.prefix_caching [--quick] [--out benchmarks/results/cpu]
"""

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, PositiveInt

from benchmarks.lib.engine_lab import (
    DemoResult,
    Lab,
    LabRun,
    SamplingSpec,
    chosen_workload,
    demo_lab,
    demo_parser,
    result_head,
    run,
    save,
)
from benchmarks.lib.report import figure

MODULE = "benchmarks.demos.prefix_caching"
Cache = Literal["on", "off"]
SYSTEM = "Answer the question using only these warehouse notes.\n"
NOTE = "Note {i}: order {i} left the {city} warehouse on day {day} with {n} crates of {item}."
CITIES = ("Lyon", "Oslo", "Porto", "Turin", "Ghent", "Bergen", "Seville", "Krakow")
ITEMS = ("apples", "bolts", "paper", "tiles", "glass", "cloth", "coffee", "tyres")


class Workload(BaseModel):
    context_notes: PositiveInt = Field(
        60, description="Notes in the shared context (~25 tokens each)."
    )
    questions: PositiveInt = 8
    max_tokens: PositiveInt = 16
    burst: bool = Field(True, description="Also send all questions at once (throughput).")
    repeats: PositiveInt = 3
    seed: int = 0

    def system_prompt(self) -> str:
        rng = random.Random(self.seed)
        notes = [
            NOTE.format(
                i=i,
                city=rng.choice(CITIES),
                day=rng.randint(1, 28),
                n=rng.randint(1, 500),
                item=rng.choice(ITEMS),
            )
            for i in range(self.context_notes)
        ]
        return SYSTEM + "\n".join(notes)

    def question_texts(self) -> list[str]:
        return [f"How many crates did order {3 * q + 1} carry?" for q in range(self.questions)]


FULL = Workload()
QUICK = Workload(context_notes=4, questions=3, max_tokens=4, repeats=1)


class CacheRun(BaseModel):
    """One repeat of one setting."""

    cache: Cache
    ttft_s: list[float] = Field(description="Sequential requests, in order.")
    cached_tokens: list[int] = Field(description="Sequential requests, in order.")
    burst_makespan_s: float | None = None
    burst_output_tok_s: float | None = None
    burst_requests_per_s: float | None = None
    burst_ttft_mean_s: float | None = None


class CacheSummary(BaseModel):
    """A setting's medians over the repeats, and every run."""

    cache: Cache
    ttft_median_s: float = Field(description="Median TTFT of the sequential requests.")
    ttft_first_s: float = Field(description="TTFT of the first sequential request (cold cache).")
    cached_tokens_median: float
    burst_output_tok_s: float | None
    burst_requests_per_s: float | None
    burst_ttft_mean_s: float | None
    runs: list[CacheRun]


class PrefixCachingResult(DemoResult):
    block_size: int
    workload: Workload
    prompt_tokens_mean: float
    shared_prefix_tokens: int = Field(description="Tokens every prompt starts with.")
    on: CacheSummary
    off: CacheSummary
    ttft_speedup: float = Field(description="Median TTFT off / on.")
    burst_throughput_speedup: float | None = Field(description="Burst output tok/s on / off.")


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    first = prompts[0]
    length = len(first)
    for prompt in prompts[1:]:
        length = next(
            (i for i, (a, b) in enumerate(zip(first[:length], prompt, strict=False)) if a != b),
            min(length, len(prompt)),
        )
    return length


async def run_setting(
    lab: Lab, cache: Cache, prompts: Sequence[list[int]], spec: SamplingSpec, burst: bool
) -> CacheRun:
    """Sequential requests, then (with `burst`) all at once, each from an emptied cache."""
    read = cache == "on"
    await lab.reset_prefix_cache()
    sequential: list[LabRun] = []
    for prompt in prompts:
        sequential.append(await lab.complete(prompt, spec, time.perf_counter(), read))
    run = CacheRun(
        cache=cache,
        ttft_s=[round(c.ttft_s or c.latency_s, 4) for c in sequential],
        cached_tokens=[c.cached_prompt_tokens for c in sequential],
    )
    if not burst:
        return run
    await lab.reset_prefix_cache()
    together = await lab.complete_all(prompts, [spec] * len(prompts), time.perf_counter(), read)
    makespan = max(c.finished_s for c in together)
    return run.model_copy(
        update={
            "burst_makespan_s": round(makespan, 3),
            "burst_output_tok_s": round(sum(c.output_tokens for c in together) / makespan, 2),
            "burst_requests_per_s": round(len(together) / makespan, 3),
            "burst_ttft_mean_s": round(
                statistics.fmean(c.ttft_s or c.latency_s for c in together), 4
            ),
        }
    )


def _median(values: Sequence[float | None], digits: int) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), digits) if present else None


def summarise(cache: Cache, runs: Sequence[CacheRun]) -> CacheSummary:
    return CacheSummary(
        cache=cache,
        ttft_median_s=round(statistics.median(statistics.median(r.ttft_s) for r in runs), 4),
        ttft_first_s=round(statistics.median(r.ttft_s[0] for r in runs), 4),
        cached_tokens_median=statistics.median(t for r in runs for t in r.cached_tokens),
        burst_output_tok_s=_median([r.burst_output_tok_s for r in runs], 2),
        burst_requests_per_s=_median([r.burst_requests_per_s for r in runs], 3),
        burst_ttft_mean_s=_median([r.burst_ttft_mean_s for r in runs], 4),
        runs=list(runs),
    )


async def measure(
    lab: Lab, workload: Workload, progress: Callable[[str], None] = print
) -> tuple[CacheSummary, CacheSummary, list[list[int]]]:
    """Both settings, alternating, `workload.repeats` times; (on, off, the prompts)."""
    system = workload.system_prompt()
    prompts = [lab.chat_prompt(q, system=system) for q in workload.question_texts()]
    spec = SamplingSpec(max_tokens=workload.max_tokens, temperature=0.0, ignore_eos=True)
    runs: dict[Cache, list[CacheRun]] = {"on": [], "off": []}
    for repeat in range(workload.repeats):
        for cache in ("on", "off") if repeat % 2 == 0 else ("off", "on"):
            run = await run_setting(lab, cache, prompts, spec, workload.burst)
            runs[cache].append(run)
            burst = f", burst {run.burst_output_tok_s:6.1f} tok/s" if workload.burst else ""
            progress(
                f"  repeat {repeat + 1}/{workload.repeats} cache {cache:<3}  TTFT median "
                f"{statistics.median(run.ttft_s) * 1000:7.0f} ms, cached tokens "
                f"{statistics.median(run.cached_tokens):5.0f}{burst}"
            )
    return summarise("on", runs["on"]), summarise("off", runs["off"]), prompts


def plot(result: PrefixCachingResult, path: Path) -> None:
    """Left: TTFT of each sequential request. Right: burst throughput."""
    with figure(path, 1, 2, figsize=(12, 4.4), width_ratios=(3, 2)) as (fig, (left, right)):
        colours = {"on": "#4c72b0", "off": "#c44e52"}
        for summary in (result.on, result.off):
            ttft = [
                statistics.median(r.ttft_s[i] for r in summary.runs)
                for i in range(len(summary.runs[0].ttft_s))
            ]
            left.plot(
                range(1, len(ttft) + 1),
                [t * 1000 for t in ttft],
                marker="o",
                color=colours[summary.cache],
                label=f"cache {summary.cache} (median {summary.ttft_median_s * 1000:.0f} ms)",
            )
        left.set_xticks(range(1, result.workload.questions + 1))
        left.set_xlabel("question, one at a time (the first finds the cache empty)")
        left.set_ylabel("time to first token (ms)")
        left.set_ylim(bottom=0)
        left.legend()
        left.set_title(
            f"TTFT: {result.ttft_speedup:.1f}x faster with the shared prefix cached", fontsize=10
        )
        bars = right.bar(
            ["cache on", "cache off"],
            [result.on.burst_output_tok_s or 0.0, result.off.burst_output_tok_s or 0.0],
            color=[colours["on"], colours["off"]],
        )
        right.bar_label(bars, fmt="%.1f")
        right.set_ylabel("output tokens / s")
        right.set_title(f"{result.workload.questions} questions at once", fontsize=10)
        fig.suptitle(
            f"Prefix caching: {result.shared_prefix_tokens} shared prompt tokens of "
            f"{result.prompt_tokens_mean:.0f} ({result.model}, {result.accelerator}, "
            f"block size {result.block_size})"
        )


async def _run(args: argparse.Namespace, argv: Sequence[str]) -> PrefixCachingResult:
    workload = chosen_workload(args, FULL, QUICK)
    async with demo_lab(args) as lab:
        on, off, prompts = await measure(lab, workload)
        layout = lab.kv_layout()
    return PrefixCachingResult(
        **result_head(MODULE, argv, lab, args.model),
        block_size=layout.block_size,
        workload=workload,
        prompt_tokens_mean=round(statistics.fmean(len(p) for p in prompts), 1),
        shared_prefix_tokens=shared_prefix_length(prompts),
        on=on,
        off=off,
        ttft_speedup=round(off.ttft_median_s / on.ttft_median_s, 2),
        burst_throughput_speedup=(
            round(on.burst_output_tok_s / off.burst_output_tok_s, 2)
            if on.burst_output_tok_s and off.burst_output_tok_s
            else None
        ),
    )


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = demo_parser(MODULE, __doc__).parse_args(argv)
    result = run(_run(args, argv))
    path = save(result, args.out, "prefix_caching", plot)
    print(
        f"prefix cache on vs off: TTFT {result.ttft_speedup:.1f}x faster, burst throughput "
        f"{result.burst_throughput_speedup}x -> {path}"
    )


if __name__ == "__main__":
    main()
