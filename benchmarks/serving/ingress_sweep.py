"""Ingress sweep: one engine, several ways of running the ingress and pacing, in turn.

Starting the engine is most of a GPU run (100 s warm, 250 s with a cold compile cache) and
our overhead lives in front of it. This starts our app once, then for each variant redeploys
the OpenAIIngress deployment (replica count, environment) and the LLMServer's live settings
(its `user_config`: chunk pacing), a Serve update that leaves the LLMServer replica and its
engine running, and runs the workload. Per level it records
`vllm bench serve`'s figures, the ingress's own TTFT (its request log: from the handler's
start to the first token reaching the ingress) and the busiest threads
(`benchmarks/lib/process_cpu.py`), which say where the time goes; at the levels of
`--profile-at`, py-spy samples of every serving process (`benchmarks/lib/profiling.py`). With
`--with-bare`, bare `vllm serve` with the same engine args runs the same workload first,
and every variant gets its ratio table against it.

    python -m benchmarks.serving.ingress_sweep --dummy-8b --with-bare \\
        --variants 1 2 2:one-loop 1@8000 1@none --concurrency 1 32 128 --num-prompts 16 256 512

A variant is `N[:PRESET][@PACING]`: N ingress replicas, optionally an environment preset of
PRESETS, optionally `max_chunks_per_second` for the LLMServer (`none`: no pacing; left out:
the app args' value).
Serve's HTTP front (HAProxy, our default, or Serve's Python proxy with
`RAY_SERVE_ENABLE_HA_PROXY=0`) is chosen when Serve starts, so it holds for every variant of
one run; the JSON says which.
Writes `<out>/sweep.json` (after each variant), `sweep.png`, and with `--profile-at` the
collapsed stacks under `<out>/profiles/<variant>/c<concurrency>/`.
"""

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
from pydantic import BaseModel, Field
from ray import serve
from ray.serve.schema import ServeDeploySchema

from benchmarks.lib import process_cpu, profiling
from benchmarks.lib.report import default_out, provenance
from benchmarks.lib.serving_stacks import (
    BARE_PORT,
    OURS_PORT,
    EngineSetup,
    LevelResult,
    OurAppOptions,
    StackResult,
    Workload,
    add_engine_args,
    add_workload_args,
    bare_vllm,
    engine_setup_from_args,
    gpu_memory_gb,
    http_front,
    markdown_table,
    openai_flags,
    our_app,
    our_config,
    plot,
    ratio_rows,
    run_levels,
    workload_from_args,
)
from serve_app.core.config import LiveSettings
from serve_app.core.constants import ENV_PORT, INGRESS_DEPLOYMENT
from serve_app.runtime.runner import deploy
from serve_app.runtime.serve_config import parse_deploy_config, to_dict

MODULE = "benchmarks.serving.ingress_sweep"

# Environment presets for the ingress replicas.
PRESETS: dict[str, dict[str, str]] = {
    # User code and the handle's router on the replica's main event loop (no thread hops).
    "one-loop": {
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
        "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    },
}
SERVE_LOGS = Path("/tmp/ray/session_latest/logs/serve")
TTFT_IN_LOG = re.compile(r"status=ok .*?ttft_s=([0-9.]+)")
REDEPLOY_TIMEOUT_S = 300.0
# Prompt seeds of variant k: SEED_STEP * (k - 1) + the level's own; variant 1 gets bare vLLM's.
SEED_STEP = 1000
# Prompt seeds of a level's warm-ups: the level's plus this (no variant's or level's seed).
WARMUP_SEED_STEP = 500


class Variant(BaseModel):
    """`N[:PRESET][@PACING]`: N ingress replicas, an environment preset of PRESETS for them,
    and the LLMServer's `max_chunks_per_second` (a number, or `none`), set live."""

    name: str
    replicas: int
    env: dict[str, str]
    live_settings: LiveSettings | None

    @classmethod
    def parse(cls, spec: str) -> "Variant":
        ingress, _, pacing = spec.partition("@")
        replicas, _, preset = ingress.partition(":")
        if preset and preset not in PRESETS:
            raise SystemExit(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        live = None
        if pacing:
            live = LiveSettings(max_chunks_per_second=None if pacing == "none" else float(pacing))
        return cls(
            name=spec, replicas=int(replicas), env=PRESETS.get(preset, {}), live_settings=live
        )

    def options(self, base: OurAppOptions) -> OurAppOptions:
        return base.model_copy(
            update={
                "ingress_replicas": self.replicas,
                "ingress_env": self.env,
                "live_settings": self.live_settings,
            }
        )


class SweptLevel(LevelResult):
    ingress_ttft_ms: dict[str, float]
    busiest_threads: list[process_cpu.ThreadUsage]
    profiles: dict[str, profiling.ProcessProfile] = Field(default_factory=dict)


def redeploy(config: ServeDeploySchema, ingress_replicas: int) -> None:
    """Deploy `config` to the running Serve; wait until every deployment is healthy and the
    ingress runs `ingress_replicas` replicas (the LLMServer keeps its replica: options that
    do not restart it, such as its `user_config`, are all a variant changes there)."""
    app_name = config.applications[0].name
    ray.init(address="auto", namespace="serve", logging_level="ERROR", log_to_driver=False)
    try:
        deploy(parse_deploy_config(to_dict(config), {ENV_PORT: str(OURS_PORT)}))
        deadline = time.monotonic() + REDEPLOY_TIMEOUT_S
        while time.monotonic() < deadline:
            app = serve.status().applications.get(app_name)
            if (
                app is not None
                and app.status == "RUNNING"
                and all(d.status == "HEALTHY" for d in app.deployments.values())
                and dict(app.deployments[INGRESS_DEPLOYMENT].replica_states)
                == {"RUNNING": ingress_replicas}
            ):
                return
            time.sleep(1)
        raise TimeoutError(f"{app_name} not updated within {REDEPLOY_TIMEOUT_S:.0f}s")
    finally:
        ray.shutdown()


def _log_offsets() -> dict[Path, int]:
    return {path: path.stat().st_size for path in SERVE_LOGS.glob(f"*{INGRESS_DEPLOYMENT}*.log")}


def _ingress_ttfts_ms(offsets: dict[Path, int]) -> dict[str, float]:
    """p50/p90 of the `ttft_s` the ingress logged for requests finished since `offsets`."""
    values = []
    for path in SERVE_LOGS.glob(f"*{INGRESS_DEPLOYMENT}*.log"):
        with path.open("rb") as log:
            log.seek(offsets.get(path, 0))
            text = log.read().decode(errors="replace")
        values += [float(m.group(1)) * 1000 for m in TTFT_IN_LOG.finditer(text)]
    if len(values) < 2:
        return {}
    deciles = statistics.quantiles(values, n=10)
    return {"p50": round(statistics.median(values), 2), "p90": round(deciles[8], 2)}


def measure_levels(
    port: int,
    setup: EngineSetup,
    workload: Workload,
    seed_offset: int,
    profile_dir: Path,
    profile_at: Sequence[int] = (),
) -> list[SweptLevel]:
    """Each level of the workload in turn, with the ingress's TTFT and the busiest threads.

    `seed_offset` shifts every level's prompt seed: each variant on the one engine gets
    prompts of its own, so none finds its prefill in the prefix cache of an earlier one.
    The levels of `profile_at` are sampled with py-spy, into `<profile_dir>/c<concurrency>/`.
    """
    levels = []
    url = f"http://127.0.0.1:{port}"
    for level in workload.levels:
        level = level.model_copy(update={"seed": level.seed + seed_offset})
        # The warm-ups go first, on prompts of their own, so that the ingress's TTFT is read
        # from the measured requests' log lines only.
        warmups = level.model_copy(
            update={"num_prompts": workload.warmups, "seed": level.seed + WARMUP_SEED_STEP}
        )
        if workload.warmups:
            run_levels(url, setup.served_model_name, setup.tokenizer,
                       workload.model_copy(update={"levels": [warmups], "warmups": 0}))  # fmt: skip
        offsets = _log_offsets()
        sampled = (
            profiling.profiled(profile_dir / f"c{level.concurrency}")
            if level.concurrency in profile_at
            else contextlib.nullcontext({})
        )
        with sampled as profiles:
            before, start = process_cpu.snapshot(), time.monotonic()
            (result,) = run_levels(
                url,
                setup.served_model_name,
                setup.tokenizer,
                workload.model_copy(update={"levels": [level], "warmups": 0}),
            )
            after, seconds = process_cpu.snapshot(), time.monotonic() - start
        levels.append(
            SweptLevel(
                **result.model_dump(),
                ingress_ttft_ms=_ingress_ttfts_ms(offsets),
                busiest_threads=process_cpu.busiest(before, after, seconds),
                profiles=profiles,
            )
        )
    return levels


def _print_levels(name: str, levels: list[SweptLevel]) -> None:
    for level in levels:
        print(
            f"{name} c={level.concurrency}: {level.output_throughput:.0f} tok/s, "
            f"TTFT p50 {level.ttft_ms['p50']:.1f} ms (ingress {level.ingress_ttft_ms.get('p50')}), "
            f"ITL p99 {level.itl_ms['p99']:.1f} ms",
            flush=True,
        )
        for profile in level.profiles.values():
            top = ", ".join(f"{f.function} {f.share:.0%}" for f in profile.top_self[:3])
            print(f"  {profile.name}: {profile.busy_cores} cores busy; {profile.error or top}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument(
        "--variants", nargs="+", default=["1", "2", "4"], help="N[:PRESET][@PACING]"
    )
    add_workload_args(parser)
    add_engine_args(parser)
    parser.add_argument("--with-bare", action="store_true", help="bare vLLM first, and ratios")
    parser.add_argument(
        "--profile-at",
        type=int,
        nargs="+",
        default=[],
        metavar="CONCURRENCY",
        help="sample the serving processes with py-spy at these levels (<out>/profiles/)",
    )
    parser.add_argument(
        "--out", type=Path, help="default: benchmarks/results/<machine>/<date>-ingress-sweep"
    )
    args = parser.parse_args(argv)

    variants = [Variant.parse(spec) for spec in args.variants]
    if args.profile_at and profiling.py_spy() is None:
        raise SystemExit("--profile-at needs py-spy (pip install py-spy)")
    workload = workload_from_args(args)
    setup = engine_setup_from_args(args)
    args.out = args.out or default_out("ingress-sweep")
    args.out.mkdir(parents=True, exist_ok=True)
    base_config = our_config(setup, OurAppOptions(app_args=args.app_args))
    report: dict[str, Any] = {
        **provenance(MODULE, sys.argv[1:], base_config.applications[0].args),
        "engine": setup.model_dump(exclude={"model", "tokenizer"}),
        "http_front": http_front(os.environ),
        "app_args": args.app_args,
        "workload": workload.model_dump(),
        "variants": [],
    }

    def save() -> None:
        (args.out / "sweep.json").write_text(
            json.dumps(report, indent=2, default=lambda model: model.model_dump())
        )

    stacks: list[StackResult] = []
    bare: StackResult | None = None
    if args.with_bare:
        flags = openai_flags(report["app_config"])  # bare vLLM with our OpenAI settings
        with bare_vllm(setup, args.out / "bare.log", flags=flags) as startup_s:
            memory = gpu_memory_gb()
            levels = measure_levels(
                BARE_PORT, setup, workload, 0, args.out / "profiles" / "bare", args.profile_at
            )
        bare = StackResult(name="bare vLLM", startup_s=round(startup_s, 1), levels=levels)
        report["bare"] = {"startup_s": bare.startup_s, "gpu_memory_gb": memory, "levels": levels}
        stacks.append(bare)
        save()
        _print_levels("bare", levels)

    base = OurAppOptions(app_args=args.app_args)
    first = variants[0].options(base)
    with our_app(setup, first, args.out / "ours.log", Path(tempfile.mkdtemp())) as startup_s:
        report |= {"startup_s": round(startup_s, 1), "gpu_memory_gb": gpu_memory_gb()}
        for number, variant in enumerate(variants, start=1):
            if number > 1:
                redeploy(our_config(setup, variant.options(base)), variant.replicas)
            offset = SEED_STEP * (number - 1)
            folder = args.out / "profiles" / variant.name
            levels = measure_levels(OURS_PORT, setup, workload, offset, folder, args.profile_at)
            stack = StackResult(name=variant.name, levels=levels)
            ratios = ratio_rows(bare, stack) if bare else None
            report["variants"].append({**variant.model_dump(), "levels": levels, "ratios": ratios})
            stacks.append(stack)
            save()
            _print_levels(variant.name, levels)
            if ratios:
                print(markdown_table(ratios), flush=True)
    title = f"{setup.served_model_name}: ingress variants ({report['http_front']})"
    plot(stacks, args.out / "sweep.png", title)


if __name__ == "__main__":
    main()
