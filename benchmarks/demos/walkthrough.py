"""The guide's ten steps, run live: how vLLM serves fast, with this machine's own figures.

    python -m benchmarks.demos.walkthrough [--model M] [--tensor-parallel-size N] [--json PATH]
                                    [--quick]

One engine with the service's engine arguments (started directly, outside Ray Serve) walks
through: (1) imports, versions and the machine; (2) loading the model; (3) PagedAttention,
read from the running engine's KV cache; (4) sampling parameters; (5) the test prompts;
(6) batch generation through continuous batching; (7) each output's figures; (8) streaming;
(9) the measured impact of continuous batching and of prefix caching; (10) a summary.
Step 9 runs small versions of `benchmarks.demos.continuous_batching` and
`benchmarks.demos.prefix_caching`; `--quick` shrinks every step to CI size. `--json` writes
every figure.

Only the standard library and pydantic are imported up front, so step 1 can time the rest;
vLLM logs only errors unless `VLLM_LOGGING_LEVEL` says otherwise, so the steps stay readable.
"""

import argparse
import asyncio
import importlib
import os
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from benchmarks.lib.report import Provenance, provenance
from benchmarks.lib.sampling import SamplingSpec
from serve_app.core.config import AppConfig
from serve_app.core.constants import DEFAULT_MODEL_ID

if TYPE_CHECKING:
    from benchmarks.lib.engine_lab import Lab, LabRun

TOTAL_STEPS = 10
RULE = "=" * 78
PROMPTS = (
    "What is the capital of France?",
    "Explain quantum computing in simple terms.",
    "Write a short poem about the ocean.",
    "What are the benefits of renewable energy?",
    "How does a neural network learn?",
)
# Sequence lengths of step 3's table; the summary quotes the typical chat one.
FIT_LENGTHS = (2048, 512, 128)
TYPICAL_TOKENS = 512
STREAM_PROMPT = "Tell me a short story about a robot who learns to paint."
_GIB = 1024**3


class StepRecord(BaseModel):
    number: int
    title: str
    seconds: float


class Environment(BaseModel):
    import_seconds: dict[str, float] = Field(description="Time to import each package.")
    machine: dict[str, Any]
    accelerator: str
    memory_available_gib: float


class ModelLoad(BaseModel):
    model: str
    engine_start_s: float
    first_request_s: float = Field(description="The warm-up request (lazy set-up).")
    rss_gib: float = Field(description="Resident memory of this process and its children.")
    gpu_memory_used_gib: float | None = Field(None, description="All GPUs of the node (NVML).")


class FitRow(BaseModel):
    sequence_tokens: int
    paged: int = Field(description="Sequences of this length the paged cache holds at once.")
    contiguous: int = Field(description="Sequences when each preallocates max_model_len.")


class PagedAttentionFigures(BaseModel):
    block_size: int
    num_blocks: int
    capacity_tokens: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype_bytes: int
    kv_bytes_per_token: int
    kv_cache_gib: float
    max_model_len: int
    max_num_seqs: int
    fits: list[FitRow]


class PromptFigures(BaseModel):
    text: str
    tokens: int


class OutputFigures(BaseModel):
    prompt: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: str | None
    ttft_s: float | None
    latency_s: float
    tokens_per_second: float
    text: str


class BatchFigures(BaseModel):
    requests: int
    wall_s: float
    output_tokens: int
    tokens_per_second: float


class StreamingFigures(BaseModel):
    prompt: str
    ttft_s: float | None
    output_tokens: int
    seconds: float
    tokens_per_second: float
    text: str


class BatchingImpact(BaseModel):
    requests: int
    batch_size: int
    throughput_tok_s: dict[str, float] = Field(description="Per schedule.")
    latency_mean_s: dict[str, float]
    latency_p99_s: dict[str, float]
    continuous_slots_speedup: float
    continuous_all_speedup: float


class PrefixImpact(BaseModel):
    prompt_tokens_mean: float
    questions: int
    ttft_on_s: float
    ttft_off_s: float
    cached_tokens_on: float
    cached_tokens_off: float
    ttft_speedup: float


class Impact(BaseModel):
    continuous_batching: BatchingImpact
    prefix_caching: PrefixImpact


class SummaryRow(BaseModel):
    figure: str
    value: str


class WalkthroughReport(Provenance):
    quick: bool
    steps: list[StepRecord]
    environment: Environment
    model_load: ModelLoad
    paged_attention: PagedAttentionFigures
    sampling: dict[str, Any]
    prompts: list[PromptFigures]
    batch: BatchFigures
    outputs: list[OutputFigures]
    streaming: StreamingFigures
    impact: Impact
    summary: list[SummaryRow]
    total_s: float


def say(text: str = "") -> None:
    print(text, flush=True)


class StepTimer:
    """Prints each step's header and its duration, and records both."""

    def __init__(self) -> None:
        self.records: list[StepRecord] = []

    @contextmanager
    def step(self, number: int, title: str) -> Iterator[None]:
        say(f"\n{RULE}\nStep {number}/{TOTAL_STEPS}: {title}\n{RULE}")
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self.records.append(StepRecord(number=number, title=title, seconds=round(seconds, 2)))
        say(f"(step {number}: {seconds:.1f} s)")


# ---- the steps ---------------------------------------------------------------------------


def environment_step() -> Environment:
    """Import the stack, timing each package, then describe the machine."""
    import_seconds = {}
    for name in ("torch", "vllm", "ray", "benchmarks.lib.engine_lab"):
        say(f"  importing {name} ...")
        start = time.perf_counter()
        importlib.import_module(name)
        import_seconds[name] = round(time.perf_counter() - start, 2)
    import psutil

    from benchmarks.lib.report import detect_accelerator, machine

    info = machine()
    accelerator = detect_accelerator()
    available = round(psutil.virtual_memory().available / _GIB, 1)
    say(f"  Python {info['python']}, torch {info['torch']}, vLLM {info['vllm']}, Ray {info['ray']}")
    say(f"  accelerator: {accelerator.upper()}" + (f" ({info['gpu']})" if info["gpu"] else ""))
    say(f"  CPU: {info['cpu']}, {info['cpu_count']} cores")
    say(f"  memory: {info['memory_gib']} GiB, {available} GiB available")
    if info["gpu_memory_gib"]:
        say(f"  GPU memory: {info['gpu_memory_gib']} GiB in all")
    return Environment(
        import_seconds=import_seconds,
        machine=info,
        accelerator=accelerator,
        memory_available_gib=available,
    )


async def model_load_step(lab: "Lab", model: str) -> ModelLoad:
    import psutil

    from serve_app.observability.gpu_stats import read_gpu_memory

    say(f"  engine started in {lab.startup_s:.1f} s; warming up (the first forward is slow) ...")
    start = time.perf_counter()
    await lab.warm_up()
    first = time.perf_counter() - start
    process = psutil.Process()
    rss = sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])
    gpus = read_gpu_memory([])
    load = ModelLoad(
        model=model,
        engine_start_s=round(lab.startup_s, 2),
        first_request_s=round(first, 2),
        rss_gib=round(rss / _GIB, 2),
        gpu_memory_used_gib=None if gpus is None else gpus.used_gb,
    )
    say(f"  first request: {first:.1f} s")
    say(f"  resident memory (this process and the engine's): {load.rss_gib} GiB")
    if load.gpu_memory_used_gib is not None:
        say(f"  GPU memory in use (node): {load.gpu_memory_used_gib} GiB")
    return load


def paged_attention_step(lab: "Lab") -> PagedAttentionFigures:
    layout = lab.kv_layout()
    lengths = {layout.max_model_len} | {n for n in FIT_LENGTHS if n < layout.max_model_len}
    figures = PagedAttentionFigures(
        **layout.model_dump(),
        capacity_tokens=layout.capacity_tokens,
        kv_bytes_per_token=layout.kv_bytes_per_token,
        kv_cache_gib=round(layout.capacity_tokens * layout.kv_bytes_per_token / _GIB, 3),
        fits=[
            FitRow(
                sequence_tokens=n,
                paged=layout.paged_sequences(n),
                contiguous=layout.contiguous_sequences(),
            )
            for n in sorted(lengths, reverse=True)
        ],
    )
    say(f"  block size:        {figures.block_size} tokens per KV block")
    say(f"  KV blocks:         {figures.num_blocks} = {figures.capacity_tokens:,} token slots")
    say(
        f"  KV per token:      2 (K,V) x {figures.num_layers} layers x {figures.num_kv_heads} KV "
        f"heads x {figures.head_dim} dims x {figures.dtype_bytes} bytes = "
        f"{figures.kv_bytes_per_token:,} bytes"
    )
    say(f"  KV cache:          {figures.kv_cache_gib} GiB")
    say(f"  max_model_len:     {figures.max_model_len}; max_num_seqs: {figures.max_num_seqs}")
    say("  sequences that fit at once:")
    say("    length    paged (blocks on demand)    contiguous (max_model_len each)")
    for row in figures.fits:
        capped = " (max_num_seqs)" if row.paged == figures.max_num_seqs else ""
        say(f"    {row.sequence_tokens:>6}    {row.paged:>6}{capped:<20}  {row.contiguous:>6}")
    say("  Paging allocates a block only when a sequence reaches it, so short sequences leave")
    say("  the rest free for others; contiguous preallocation reserves max_model_len for each.")
    return figures


def sampling_step(quick: bool) -> SamplingSpec:
    from benchmarks.lib.engine_lab import sampling_params

    spec = SamplingSpec(max_tokens=24 if quick else 64, temperature=0.7, top_p=0.95, seed=42)
    say(f"  temperature {spec.temperature}: sharpens or flattens the next-token distribution")
    say(f"  top_p {spec.top_p}: sample only from the smallest set holding 95% of the probability")
    say(f"  max_tokens {spec.max_tokens}: the answer's budget; seed {spec.seed}: reproducible")
    say(f"  what vLLM receives: {sampling_params(spec)}")
    return spec


def prompts_step(lab: "Lab") -> tuple[list[PromptFigures], list[list[int]]]:
    token_ids = [lab.chat_prompt(text) for text in PROMPTS]
    figures = [
        PromptFigures(text=text, tokens=len(ids))
        for text, ids in zip(PROMPTS, token_ids, strict=True)
    ]
    for number, prompt in enumerate(figures, 1):
        say(f"  {number}. {prompt.text}  ({prompt.tokens} tokens with the chat template)")
    return figures, token_ids


async def batch_step(
    lab: "Lab", token_ids: Sequence[list[int]], spec: SamplingSpec
) -> tuple[BatchFigures, "list[LabRun]"]:
    """All prompts at once into the one engine, printing each answer as it finishes."""

    async def numbered(index: int, ids: list[int]) -> "tuple[int, LabRun]":
        return index, await lab.complete(ids, spec, origin)

    say(f"  submitting {len(token_ids)} requests at once; the engine batches them every step,")
    say("  and a finished one leaves the batch at once (continuous batching)")
    origin = time.perf_counter()
    completions: dict[int, LabRun] = {}
    for done in asyncio.as_completed([numbered(i, ids) for i, ids in enumerate(token_ids)]):
        index, completion = await done
        completions[index] = completion
        say(
            f"  [{len(completions)}/{len(token_ids)}] prompt {index + 1} done at "
            f"{completion.finished_s:5.1f} s: {completion.output_tokens} tokens "
            f"({completion.finish_reason})"
        )
    ordered = [completions[i] for i in range(len(token_ids))]
    wall = max(c.finished_s for c in ordered)
    tokens = sum(c.output_tokens for c in ordered)
    figures = BatchFigures(
        requests=len(ordered),
        wall_s=round(wall, 2),
        output_tokens=tokens,
        tokens_per_second=round(tokens / wall, 2),
    )
    say(f"  {tokens} tokens in {wall:.1f} s: {figures.tokens_per_second:.1f} tok/s together")
    return figures, ordered


def outputs_step(completions: "Sequence[LabRun]") -> list[OutputFigures]:
    outputs = [
        OutputFigures(
            prompt=prompt,
            prompt_tokens=c.prompt_tokens,
            output_tokens=c.output_tokens,
            finish_reason=c.finish_reason,
            ttft_s=None if c.ttft_s is None else round(c.ttft_s, 3),
            latency_s=round(c.latency_s, 3),
            tokens_per_second=round(c.tokens_per_second, 2),
            text=c.text,
        )
        for prompt, c in zip(PROMPTS, completions, strict=True)
    ]
    say("   #  in  out  finish    TTFT s  total s  tok/s  answer")
    for number, o in enumerate(outputs, 1):
        ttft = f"{o.ttft_s:6.2f}" if o.ttft_s is not None else "     -"
        answer = " ".join(o.text.split())[:60]
        say(
            f"  {number:>2} {o.prompt_tokens:>3} {o.output_tokens:>4}  {o.finish_reason or '-':<8}"
            f"  {ttft}  {o.latency_s:7.2f}  {o.tokens_per_second:5.1f}  {answer}"
        )
    say("  finish 'stop': the model ended its answer; 'length': it used the whole budget")
    return outputs


async def streaming_step(lab: "Lab", spec: SamplingSpec, batch: BatchFigures) -> StreamingFigures:
    say(f"  prompt: {STREAM_PROMPT}")
    sys.stdout.write("  > ")

    def show(piece: str) -> None:
        sys.stdout.write(piece.replace("\n", " "))
        sys.stdout.flush()

    completion = await lab.complete(
        lab.chat_prompt(STREAM_PROMPT), spec, time.perf_counter(), on_text=show
    )
    say()
    figures = StreamingFigures(
        prompt=STREAM_PROMPT,
        ttft_s=None if completion.ttft_s is None else round(completion.ttft_s, 3),
        output_tokens=completion.output_tokens,
        seconds=round(completion.latency_s, 3),
        tokens_per_second=round(completion.tokens_per_second, 2),
        text=completion.text,
    )
    say(
        f"  first token after {figures.ttft_s} s; {figures.output_tokens} tokens in "
        f"{figures.seconds:.1f} s ({figures.tokens_per_second:.1f} tok/s, one stream alone)"
    )
    explanation = (
        f"the batch of step 6 made {batch.tokens_per_second:.1f} tok/s together: "
        f"{batch.tokens_per_second / figures.tokens_per_second:.1f}x one stream, because each "
        "engine step decodes every running sequence at once, for much less than a step per "
        "sequence (on a GPU, where a step is bound by reading the weights, the gain is larger)."
    )
    say(textwrap.fill(explanation, width=90, initial_indent="  ", subsequent_indent="  "))
    return figures


async def impact_step(lab: "Lab", quick: bool) -> Impact:
    """Small runs of the continuous-batching and prefix-caching benchmarks on this engine."""
    from benchmarks.demos import continuous_batching, prefix_caching

    batching = continuous_batching.Workload(
        num_requests=6 if quick else 8, max_tokens=32 if quick else 48, repeats=1
    )
    say(
        f"  continuous vs static batching: {batching.num_requests} requests of "
        f"{batching.min_tokens}-{batching.max_tokens} tokens, B = {batching.batch_size}"
    )
    modes = {m.mode: m for m in await continuous_batching.measure(lab, batching, say)}
    prefix = prefix_caching.Workload(
        context_notes=4 if quick else 9,
        questions=3 if quick else 4,
        max_tokens=4,
        repeats=1,
        burst=False,
    )
    say(
        f"  prefix caching: a shared context of {prefix.context_notes} notes, "
        f"{prefix.questions} different questions one at a time, cache on vs off"
    )
    on, off, prompts = await prefix_caching.measure(lab, prefix, say)
    static = modes["static"].throughput_tok_s
    impact = Impact(
        continuous_batching=BatchingImpact(
            requests=batching.num_requests,
            batch_size=batching.batch_size,
            throughput_tok_s={k: m.throughput_tok_s for k, m in modes.items()},
            latency_mean_s={k: m.latency_mean_s for k, m in modes.items()},
            latency_p99_s={k: m.latency_p99_s for k, m in modes.items()},
            continuous_slots_speedup=round(modes["continuous_slots"].throughput_tok_s / static, 3),
            continuous_all_speedup=round(modes["continuous_all"].throughput_tok_s / static, 3),
        ),
        prefix_caching=PrefixImpact(
            prompt_tokens_mean=round(sum(map(len, prompts)) / len(prompts), 1),
            questions=prefix.questions,
            ttft_on_s=on.ttft_median_s,
            ttft_off_s=off.ttft_median_s,
            cached_tokens_on=on.cached_tokens_median,
            cached_tokens_off=off.cached_tokens_median,
            ttft_speedup=round(off.ttft_median_s / on.ttft_median_s, 2),
        ),
    )
    cb, pc = impact.continuous_batching, impact.prefix_caching
    say(
        f"  => continuous batching: {cb.continuous_slots_speedup:.2f}x static's throughput with "
        f"the same {cb.batch_size} slots, {cb.continuous_all_speedup:.2f}x with all submitted"
    )
    say(
        f"  => prefix caching: TTFT {pc.ttft_on_s * 1000:.0f} ms on vs {pc.ttft_off_s * 1000:.0f} "
        f"ms off ({pc.ttft_speedup:.1f}x), {pc.cached_tokens_on:.0f} of "
        f"{pc.prompt_tokens_mean:.0f} prompt tokens served from the cache"
    )
    return impact


def summary_step(report: dict[str, Any]) -> list[SummaryRow]:
    load: ModelLoad = report["model_load"]
    paged: PagedAttentionFigures = report["paged_attention"]
    batch: BatchFigures = report["batch"]
    stream: StreamingFigures = report["streaming"]
    impact: Impact = report["impact"]
    typical = next(row for row in paged.fits if row.sequence_tokens <= TYPICAL_TOKENS)
    cb, pc = impact.continuous_batching, impact.prefix_caching
    rows = [
        SummaryRow(figure="accelerator", value=report["environment"].accelerator),
        SummaryRow(figure="engine start", value=f"{load.engine_start_s:.1f} s"),
        SummaryRow(
            figure="KV cache",
            value=f"{paged.kv_cache_gib} GiB = {paged.num_blocks} blocks x {paged.block_size} "
            f"tokens, {paged.kv_bytes_per_token:,} B/token",
        ),
        SummaryRow(
            figure=f"{typical.sequence_tokens}-token sequences that fit",
            value=f"paged {typical.paged}, contiguous {typical.contiguous}",
        ),
        SummaryRow(
            figure=f"batch of {batch.requests}",
            value=f"{batch.tokens_per_second:.1f} tok/s together",
        ),
        SummaryRow(
            figure="one stream",
            value=f"{stream.tokens_per_second:.1f} tok/s, TTFT {stream.ttft_s} s",
        ),
        SummaryRow(
            figure="continuous vs static batching",
            value=f"{cb.continuous_slots_speedup:.2f}x ({cb.batch_size} slots), "
            f"{cb.continuous_all_speedup:.2f}x (all submitted)",
        ),
        SummaryRow(
            figure="prefix cache TTFT",
            value=f"{pc.ttft_on_s * 1000:.0f} ms on, {pc.ttft_off_s * 1000:.0f} ms off "
            f"({pc.ttft_speedup:.1f}x)",
        ),
    ]
    width = max(len(row.figure) for row in rows)
    for row in rows:
        say(f"  {row.figure:<{width}}  {row.value}")
    return rows


# ---- the run -----------------------------------------------------------------------------


async def walk(
    model: str, tensor_parallel_size: int, quick: bool, timer: StepTimer, environment: Environment
) -> dict[str, Any]:
    """Steps 2 to 10 on one engine (step 1 runs before the event loop: see `main`)."""
    report: dict[str, Any] = {"environment": environment}
    from benchmarks.lib.engine_lab import open_lab

    config = AppConfig(model=model, tensor_parallel_size=tensor_parallel_size)
    async with AsyncExitStack() as stack:
        with timer.step(2, f"Loading {model}"):
            say("  starting the engine (the service's engine arguments) ...")
            lab = await stack.enter_async_context(open_lab(config))
            report["model_load"] = await model_load_step(lab, model)
        with timer.step(3, "PagedAttention: the KV cache in blocks"):
            report["paged_attention"] = paged_attention_step(lab)
        with timer.step(4, "Sampling parameters"):
            spec = sampling_step(quick)
            report["sampling"] = spec.model_dump()
        with timer.step(5, "Test prompts"):
            report["prompts"], token_ids = prompts_step(lab)
        with timer.step(6, "Batch generation through continuous batching"):
            report["batch"], completions = await batch_step(lab, token_ids, spec)
        with timer.step(7, "Each output's figures"):
            report["outputs"] = outputs_step(completions)
        with timer.step(8, "Streaming"):
            report["streaming"] = await streaming_step(lab, spec, report["batch"])
        with timer.step(9, "Measured impact on this machine"):
            report["impact"] = await impact_step(lab, quick)
    with timer.step(10, "Summary"):
        report["summary"] = summary_step(report)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.demos.walkthrough", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", default=DEFAULT_MODEL_ID, help="Hugging Face id or path")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--quick", action="store_true", help="CI-sized steps")
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    start = time.perf_counter()
    timer = StepTimer()
    # Step 1 imports the stack outside the event loop: some packages keep the traceback of an
    # import-time exception, which would otherwise hold the engine's frame (and the engine)
    # alive until interpreter exit, where its __del__ fails.
    with timer.step(1, "Imports, versions and the machine"):
        environment = environment_step()
    from benchmarks.lib.engine_lab import run

    steps = run(walk(args.model, args.tensor_parallel_size, args.quick, timer, environment))
    config = AppConfig(model=args.model, tensor_parallel_size=args.tensor_parallel_size)
    report = WalkthroughReport(
        **steps,
        **provenance("benchmarks.demos.walkthrough", argv, config.model_dump(mode="json")),
        quick=args.quick,
        steps=timer.records,
        total_s=round(time.perf_counter() - start, 1),
    )
    say(f"\nWalkthrough done in {report.total_s:.0f} s.")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(report.model_dump_json(indent=2))
        say(f"Figures written to {args.json}")


if __name__ == "__main__":
    main()
