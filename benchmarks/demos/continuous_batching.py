"""Continuous batching against static batching: one engine, the same requests, three schedules.

The workload mixes output lengths: N requests whose `max_tokens` are drawn from
[min, max] with `ignore_eos`, so each generates exactly its budget. All of them arrive at
t = 0; a request's latency is its finish time. Three schedules run on the same engine:

- static: fixed batches of B requests in order; a batch starts only when the previous one
  has finished, so each batch waits for its longest member while the slots of its short
  members idle. (The engine itself still batches the B requests of a batch together.)
- continuous, B slots: at most B requests in the engine, and a waiting one enters as soon
  as any finishes (iteration-level scheduling with static's capacity: the fair comparison).
- continuous, all submitted: every request handed to the engine at once, its scheduler
  batching up to `max_num_seqs` of them (how the service runs).

Schedules alternate within each repeat, the prefix cache is reset before every run (the
prompts repeat), and the figures are medians over the repeats. The plot is the guide's
batching diagram drawn from the measured times: one bar per request, one panel per schedule.

    python -m benchmarks.demos.continuous_batching [--quick] [--out benchmarks/results/cpu]
"""

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy
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

MODULE = "benchmarks.demos.continuous_batching"
Mode = Literal["static", "continuous_slots", "continuous_all"]
MODES: tuple[Mode, ...] = ("static", "continuous_slots", "continuous_all")
TOPICS = (
    "a lighthouse keeper",
    "a robot learning to paint",
    "the last train of the night",
    "a city under the sea",
    "a dragon who is afraid of heights",
    "a detective cat",
    "the first day of spring",
    "a library that never closes",
)


class Workload(BaseModel):
    num_requests: PositiveInt = 16
    min_tokens: PositiveInt = 8
    max_tokens: PositiveInt = 128
    batch_size: PositiveInt = Field(4, description="B: static batch size and continuous slots.")
    repeats: PositiveInt = 3
    seed: int = 0

    def budgets(self) -> list[int]:
        """Each request's max_tokens, drawn uniformly from [min_tokens, max_tokens]."""
        rng = random.Random(self.seed)
        return [rng.randint(self.min_tokens, self.max_tokens) for _ in range(self.num_requests)]


FULL = Workload()
QUICK = Workload(num_requests=6, max_tokens=40, repeats=1)


class RequestSpan(BaseModel):
    """One request in a run: arrival is t = 0 for all of them."""

    max_tokens: int
    output_tokens: int
    entered_s: float = Field(description="When it was handed to the engine.")
    first_token_s: float | None
    finished_s: float


class ModeRun(BaseModel):
    mode: Mode
    makespan_s: float
    output_tokens: int
    throughput_tok_s: float
    latency_mean_s: float
    latency_p99_s: float
    requests: list[RequestSpan]


class ModeSummary(BaseModel):
    """A schedule's medians over the repeats, and every run."""

    mode: Mode
    label: str
    throughput_tok_s: float
    latency_mean_s: float
    latency_p99_s: float
    runs: list[ModeRun]

    def median_run(self) -> ModeRun:
        """The run whose throughput is the median one (drawn in the timeline)."""
        ordered = sorted(self.runs, key=lambda run: run.throughput_tok_s)
        return ordered[(len(ordered) - 1) // 2]


class ContinuousBatchingResult(DemoResult):
    max_num_seqs: int
    workload: Workload
    modes: list[ModeSummary]
    continuous_slots_speedup: float = Field(description="Throughput, B slots / static.")
    continuous_all_speedup: float = Field(description="Throughput, all submitted / static.")


def label(mode: Mode, batch_size: int) -> str:
    return {
        "static": f"static batches of {batch_size}",
        "continuous_slots": f"continuous, {batch_size} slots",
        "continuous_all": "continuous, all submitted",
    }[mode]


async def run_schedule(
    lab: Lab,
    mode: Mode,
    prompts: Sequence[list[int]],
    specs: Sequence[SamplingSpec],
    batch_size: int,
) -> list[LabRun]:
    """Run every request under one schedule; results in request order, times from t = 0."""
    origin = time.perf_counter()
    if mode == "static":
        results: list[LabRun] = []
        for start in range(0, len(prompts), batch_size):
            batch = slice(start, start + batch_size)
            results += await lab.complete_all(prompts[batch], specs[batch], origin)
        return results
    if mode == "continuous_all":
        return await lab.complete_all(prompts, specs, origin)
    slots = asyncio.Semaphore(batch_size)

    async def in_a_slot(prompt: list[int], spec: SamplingSpec) -> LabRun:
        async with slots:
            return await lab.complete(prompt, spec, origin)

    return await asyncio.gather(*map(in_a_slot, prompts, specs))


def summarise_run(mode: Mode, completions: Sequence[LabRun], budgets: Sequence[int]) -> ModeRun:
    latencies = [c.finished_s for c in completions]
    output_tokens = sum(c.output_tokens for c in completions)
    makespan = max(latencies)
    return ModeRun(
        mode=mode,
        makespan_s=round(makespan, 3),
        output_tokens=output_tokens,
        throughput_tok_s=round(output_tokens / makespan, 2),
        latency_mean_s=round(statistics.fmean(latencies), 3),
        latency_p99_s=round(float(numpy.percentile(latencies, 99)), 3),
        requests=[
            RequestSpan(
                max_tokens=budget,
                output_tokens=c.output_tokens,
                entered_s=round(c.submitted_s, 4),
                first_token_s=None if c.first_token_s is None else round(c.first_token_s, 4),
                finished_s=round(c.finished_s, 4),
            )
            for c, budget in zip(completions, budgets, strict=True)
        ],
    )


async def measure(
    lab: Lab, workload: Workload, progress: Callable[[str], None] = print
) -> list[ModeSummary]:
    """Run the three schedules `workload.repeats` times each, alternating; medians per mode."""
    budgets = workload.budgets()
    # Short plain prompts: every schedule does the same prefill work, so keep it small.
    prompts = [
        lab.tokenizer.encode(f"Story {i}: once upon a time, {TOPICS[i % len(TOPICS)]}")
        for i in range(workload.num_requests)
    ]
    specs = [SamplingSpec(max_tokens=b, temperature=0.0, ignore_eos=True) for b in budgets]
    runs: dict[Mode, list[ModeRun]] = {mode: [] for mode in MODES}
    for repeat in range(workload.repeats):
        for mode in MODES:
            await lab.reset_prefix_cache()
            completions = await run_schedule(lab, mode, prompts, specs, workload.batch_size)
            run = summarise_run(mode, completions, budgets)
            runs[mode].append(run)
            progress(
                f"  repeat {repeat + 1}/{workload.repeats} {label(mode, workload.batch_size):<28}"
                f" {run.throughput_tok_s:7.1f} tok/s, latency mean {run.latency_mean_s:.2f} s,"
                f" p99 {run.latency_p99_s:.2f} s"
            )
    return [
        ModeSummary(
            mode=mode,
            label=label(mode, workload.batch_size),
            throughput_tok_s=round(statistics.median(r.throughput_tok_s for r in runs[mode]), 2),
            latency_mean_s=round(statistics.median(r.latency_mean_s for r in runs[mode]), 3),
            latency_p99_s=round(statistics.median(r.latency_p99_s for r in runs[mode]), 3),
            runs=runs[mode],
        )
        for mode in MODES
    ]


def plot(result: ContinuousBatchingResult, path: Path) -> None:
    """One panel per schedule, one bar per request: waiting, prefill, decode."""
    from matplotlib.patches import Patch

    size = (11, 2.2 + 1.6 * len(result.modes))
    with figure(path, len(result.modes), 1, figsize=size, bottom_margin=0.04) as (fig, axes):
        end = max(s.median_run().makespan_s for s in result.modes) * 1.02
        for ax, summary in zip(axes, result.modes, strict=True):
            run = summary.median_run()
            for row, span in enumerate(run.requests):
                first = span.first_token_s or span.finished_s
                ax.barh(row, span.entered_s, color="#dddddd")
                ax.barh(row, first - span.entered_s, left=span.entered_s, color="#f4a261")
                ax.barh(row, span.finished_s - first, left=first, color="#2a6f97")
                ax.text(span.finished_s, row, f" {span.max_tokens}", va="center", fontsize=7)
            ax.set_xlim(0, end)
            ax.invert_yaxis()
            ax.set_ylabel("request")
            ax.set_title(
                f"{summary.label}: {run.throughput_tok_s:.0f} tok/s, "
                f"latency mean {run.latency_mean_s:.1f} s, p99 {run.latency_p99_s:.1f} s",
                fontsize=10,
            )
        axes[-1].set_xlabel("seconds since all requests arrived (at each bar's end: its tokens)")
        handles = [Patch(color=c) for c in ("#dddddd", "#f4a261", "#2a6f97")]
        fig.legend(
            handles, ["waiting", "until first token", "decoding"], loc="lower center", ncol=3
        )
        fig.suptitle(
            f"Continuous vs static batching, {result.workload.num_requests} requests of "
            f"{result.workload.min_tokens}-{result.workload.max_tokens} tokens "
            f"({result.model}, {result.accelerator})"
        )


async def _run(args: argparse.Namespace, argv: Sequence[str]) -> ContinuousBatchingResult:
    workload = chosen_workload(args, FULL, QUICK)
    async with demo_lab(args) as lab:
        modes = await measure(lab, workload)
        layout = lab.kv_layout()
    speed = {m.mode: m.throughput_tok_s for m in modes}
    return ContinuousBatchingResult(
        **result_head(MODULE, argv, lab, args.model),
        max_num_seqs=layout.max_num_seqs,
        workload=workload,
        modes=modes,
        continuous_slots_speedup=round(speed["continuous_slots"] / speed["static"], 3),
        continuous_all_speedup=round(speed["continuous_all"] / speed["static"], 3),
    )


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = demo_parser(MODULE, __doc__).parse_args(argv)
    result = run(_run(args, argv))
    path = save(result, args.out, "continuous_batching", plot)
    print(
        f"throughput: continuous ({result.workload.batch_size} slots) / static = "
        f"{result.continuous_slots_speedup:.2f}x, all submitted / static = "
        f"{result.continuous_all_speedup:.2f}x -> {path}"
    )


if __name__ == "__main__":
    main()
