"""PagedAttention: the KV memory a mixed-length workload holds, paged vs contiguous preallocation.

Requests with prompts of mixed length (a block of notes of random size, then a question)
and a budget of `max_tokens` each, answering until they stop, all run at once on one
engine. From each request's measured token arrival times the KV cache it holds is replayed
over the run, three ways:

- paged (what vLLM does): ceil(tokens / block_size) blocks, growing as tokens arrive and
  freed when the request finishes; the waste is the unused tail of each last block;
- contiguous to the budget: prompt + max_tokens slots reserved up front (what a server
  that knows the budget must hold); the waste is every budgeted token never generated;
- contiguous to max_model_len: the naive preallocation of the whole context per sequence.

Why replayed: the three ways need the same per-request token counts, and vLLM's block
manager allocates ceil(tokens / block_size) blocks to each running request, so replaying
that rule gives paging's blocks at every moment. Two approximations, both against paging: a
request counts from its submission (its blocks are allocated when its prefill is scheduled,
a step later at most), and blocks shared through the prefix cache count once per request.
The engine's own account is recorded beside it: its `vllm:kv_cache_usage_perc` gauge
(fraction of KV blocks in use), sampled every 10 ms during the run, as the check that the
replay matches what the engine really held.

The block size, block count and bytes per token are read from the running engine.

    python -m benchmarks.demos.paged_attention [--quick] [--out benchmarks/results/cpu]
"""

import argparse
import asyncio
import itertools
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, Field, PositiveInt

from benchmarks.lib.engine_lab import (
    DemoResult,
    KVCacheLayout,
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
from serve_app import vllm_compat

MODULE = "benchmarks.demos.paged_attention"
SAMPLE_EVERY_S = 0.01
_MIB = 1024**2
_MAX_TIMELINE_POINTS = 400
NOTE = "Note {i}: the shipment for order {i} left the warehouse on day {day} with {n} crates."
QUESTIONS = (
    "Which order left first? Answer in one word.",
    "Summarise these notes in detail.",
    "Is this a warehouse log? Answer yes or no.",
    "Write a long story inspired by these notes.",
    "How many notes are there?",
    "Explain step by step how a warehouse ships orders.",
)


class Workload(BaseModel):
    num_requests: PositiveInt = 16
    min_notes: int = Field(0, ge=0, description="Notes before the question (about 25 tokens each).")
    max_notes: int = Field(16, ge=0)
    max_tokens: PositiveInt = Field(
        256, description="Each request's budget; answers may stop sooner."
    )
    seed: int = 0

    def prompts(self) -> list[str]:
        rng = random.Random(self.seed)
        texts = []
        for r in range(self.num_requests):
            notes = rng.randint(self.min_notes, self.max_notes)
            lines = [
                NOTE.format(i=i, day=rng.randint(1, 28), n=rng.randint(1, 500))
                for i in range(notes)
            ]
            texts.append("\n".join([*lines, QUESTIONS[r % len(QUESTIONS)]]))
        return texts


FULL = Workload()
QUICK = Workload(num_requests=6, max_notes=4, max_tokens=32)


class KVSample(BaseModel):
    """KV slots (tokens) held at time `t_s`, each way."""

    t_s: float
    live_requests: int
    used: int = Field(description="Tokens actually in the sequences.")
    paged: int = Field(description="Blocks in use x block size.")
    contiguous_budget: int
    contiguous_max_len: int


class EngineSample(BaseModel):
    """KV slots (blocks in use x block size) the engine reported at time `t_s`."""

    t_s: float
    tokens: int


S = TypeVar("S", KVSample, EngineSample)


class Accounting(BaseModel):
    """One way of holding the KV cache, over the whole run."""

    peak_tokens: int
    peak_mib: float
    waste_ratio: float = Field(description="1 - used / held, integrated over the run.")
    requests_that_fit: int = Field(
        description="Requests of this workload the engine's KV memory holds at once this way "
        "(before the scheduler's own cap, max_num_seqs)."
    )


class PagedAttentionResult(DemoResult):
    layout: KVCacheLayout
    kv_bytes_per_token: int
    workload: Workload
    prompt_tokens_mean: float
    output_tokens_mean: float
    duration_s: float
    paged: Accounting
    contiguous_budget: Accounting
    contiguous_max_len: Accounting
    engine_peak_tokens: int = Field(
        description="Most KV slots in use the engine reported (vllm:kv_cache_usage_perc)."
    )
    timeline: list[KVSample]
    engine_timeline: list[EngineSample]


def replay(completions: Sequence[LabRun], layout: KVCacheLayout, max_tokens: int) -> list[KVSample]:
    """The KV slots held at every event of the run (submission, token, finish)."""
    events = sorted(
        {c.submitted_s for c in completions}
        | {t for c in completions for t in c.token_times_s}
        | {c.finished_s for c in completions}
    )
    samples = []
    for t in events:
        live = [c for c in completions if c.submitted_s <= t < c.finished_s]
        lengths = [c.prompt_tokens + sum(1 for x in c.token_times_s if x <= t) for c in live]
        samples.append(
            KVSample(
                t_s=round(t, 4),
                live_requests=len(live),
                used=sum(lengths),
                paged=sum(layout.blocks_for(n) for n in lengths) * layout.block_size,
                contiguous_budget=sum(c.prompt_tokens + max_tokens for c in live),
                contiguous_max_len=len(live) * layout.max_model_len,
            )
        )
    return samples


def _integral(samples: Sequence[KVSample], field: str) -> float:
    """Token-seconds held (each sample's value lasts until the next sample)."""
    return sum(getattr(a, field) * (b.t_s - a.t_s) for a, b in itertools.pairwise(samples))


def account(
    samples: Sequence[KVSample], field: str, layout: KVCacheLayout, per_request: float
) -> Accounting:
    peak = max(getattr(s, field) for s in samples)
    held = _integral(samples, field)
    return Accounting(
        peak_tokens=peak,
        peak_mib=round(peak * layout.kv_bytes_per_token / _MIB, 2),
        waste_ratio=round(1 - _integral(samples, "used") / held, 4) if held else 0.0,
        requests_that_fit=int(layout.capacity_tokens // per_request),
    )


def _thin(samples: list[S]) -> list[S]:
    """At most about _MAX_TIMELINE_POINTS of them, evenly spaced, the last one kept."""
    step = max(1, len(samples) // _MAX_TIMELINE_POINTS)
    return samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else [])


async def sample_engine_usage(
    layout: KVCacheLayout, origin: float, samples: list[EngineSample]
) -> None:
    """Append the engine's KV usage (in token slots) every SAMPLE_EVERY_S until cancelled."""
    while True:
        usage = vllm_compat.local_kv_cache_usage()
        if usage is not None:
            tokens = round(usage * layout.num_blocks) * layout.block_size
            samples.append(EngineSample(t_s=round(time.perf_counter() - origin, 4), tokens=tokens))
        await asyncio.sleep(SAMPLE_EVERY_S)


async def measure(
    lab: Lab, workload: Workload
) -> tuple[list[LabRun], KVCacheLayout, list[EngineSample]]:
    """All requests at once, the engine's own KV usage sampled meanwhile."""
    prompts = [lab.chat_prompt(text) for text in workload.prompts()]
    spec = SamplingSpec(max_tokens=workload.max_tokens, temperature=0.0)
    layout = lab.kv_layout()
    engine_samples: list[EngineSample] = []
    origin = time.perf_counter()
    sampler = asyncio.create_task(sample_engine_usage(layout, origin, engine_samples))
    try:
        completions = await lab.complete_all(prompts, [spec] * len(prompts), origin)
    finally:
        sampler.cancel()
    return completions, layout, engine_samples


def build_result(
    completions: Sequence[LabRun],
    layout: KVCacheLayout,
    engine_samples: list[EngineSample],
    workload: Workload,
    head: dict[str, Any],
) -> PagedAttentionResult:
    samples = replay(completions, layout, workload.max_tokens)
    finals = [c.prompt_tokens + c.output_tokens for c in completions]
    budgets = [c.prompt_tokens + workload.max_tokens for c in completions]
    mean_blocks = statistics.fmean(layout.blocks_for(n) for n in finals)
    return PagedAttentionResult(
        **head,
        layout=layout,
        kv_bytes_per_token=layout.kv_bytes_per_token,
        workload=workload,
        prompt_tokens_mean=round(statistics.fmean(c.prompt_tokens for c in completions), 1),
        output_tokens_mean=round(statistics.fmean(c.output_tokens for c in completions), 1),
        duration_s=round(max(c.finished_s for c in completions), 3),
        paged=account(samples, "paged", layout, mean_blocks * layout.block_size),
        contiguous_budget=account(samples, "contiguous_budget", layout, statistics.fmean(budgets)),
        contiguous_max_len=account(samples, "contiguous_max_len", layout, layout.max_model_len),
        engine_peak_tokens=max((s.tokens for s in engine_samples), default=0),
        timeline=_thin(samples),
        engine_timeline=_thin(engine_samples),
    )


def plot(result: PagedAttentionResult, path: Path) -> None:
    """Left: KV slots held over the run, each way. Right: requests that fit at once."""
    with figure(path, 1, 2, figsize=(13, 5.8), width_ratios=(2, 1)) as (fig, (left, right)):
        t = [s.t_s for s in result.timeline]
        ways = [
            ("contiguous_max_len", f"contiguous, max_model_len ({result.layout.max_model_len})"),
            (
                "contiguous_budget",
                f"contiguous, prompt + max_tokens ({result.workload.max_tokens})",
            ),
            ("paged", f"paged, blocks of {result.layout.block_size}"),
            ("used", "tokens in the sequences"),
        ]
        for field, name in ways:
            left.step(t, [getattr(s, field) for s in result.timeline], where="post", label=name)
        left.step(
            [s.t_s for s in result.engine_timeline],
            [s.tokens for s in result.engine_timeline],
            where="post",
            color="black",
            linestyle="--",
            label="engine-reported blocks in use (vllm:kv_cache_usage_perc)",
        )
        left.axhline(
            result.layout.capacity_tokens, color="black", linestyle=":", label="KV capacity"
        )
        left.set_yscale("log")
        left.set_xlabel("seconds")
        left.set_ylabel("KV slots held (tokens)")
        left.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
        left.set_title(
            f"waste: paged {result.paged.waste_ratio:.0%}, contiguous budget "
            f"{result.contiguous_budget.waste_ratio:.0%}, contiguous max_len "
            f"{result.contiguous_max_len.waste_ratio:.0%}",
            fontsize=10,
        )
        names = ["contiguous\nmax_model_len", "contiguous\nbudget", "paged"]
        fits = [
            result.contiguous_max_len.requests_that_fit,
            result.contiguous_budget.requests_that_fit,
            result.paged.requests_that_fit,
        ]
        bars = right.bar(names, fits, color=["#c44e52", "#dd8452", "#4c72b0"])
        right.bar_label(bars)
        right.axhline(
            result.layout.max_num_seqs, color="black", linestyle=":", label="scheduler cap"
        )
        right.set_yscale("log")
        right.legend(fontsize=8)
        right.set_title(
            f"requests whose KV fits in {result.layout.capacity_tokens:,} slots", fontsize=10
        )
        fig.suptitle(
            f"PagedAttention, {result.workload.num_requests} mixed-length requests "
            f"({result.model}, {result.accelerator})"
        )


async def _run(args: argparse.Namespace, argv: Sequence[str]) -> PagedAttentionResult:
    workload = chosen_workload(args, FULL, QUICK)
    async with demo_lab(args) as lab:
        completions, layout, engine_samples = await measure(lab, workload)
    head = result_head(MODULE, argv, lab, args.model)
    return build_result(completions, layout, engine_samples, workload, head)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = demo_parser(MODULE, __doc__, repeats=False).parse_args(argv)
    result = run(_run(args, argv))
    path = save(result, args.out, "paged_attention", plot)
    print(
        f"KV waste: paged {result.paged.waste_ratio:.1%}, contiguous to the budget "
        f"{result.contiguous_budget.waste_ratio:.1%}, contiguous to max_model_len "
        f"{result.contiguous_max_len.waste_ratio:.1%} -> {path}"
    )


if __name__ == "__main__":
    main()
