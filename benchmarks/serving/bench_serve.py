"""Serving benchmark: our stack against bare `vllm serve`, side by side on one machine, with
vLLM's own load generator (`vllm bench serve`; `benchmarks.lib.serving_stacks`).

    # one endpoint, any OpenAI server
    python -m benchmarks.serving.bench_serve run --base-url http://localhost:8000 \\
        --model HuggingFaceTB/SmolLM2-135M-Instruct --concurrency 1 16 --num-prompts 8 64

    # bare vLLM, then our app, same engine args, one after the other
    python -m benchmarks.serving.bench_serve compare --dummy-8b --concurrency 1 32 128 \\
        --num-prompts 24 256 512 --out benchmarks/results/<machine>/<date>-<topic>

    # the other order, one stack per call (a call has a time limit): the second call adds
    # its stack to the first call's serving.json, which then holds both and the ratios
    python -m benchmarks.serving.bench_serve compare --stacks ours ... --out DIR
    python -m benchmarks.serving.bench_serve compare --stacks bare ... --out DIR

    # our app with 1 replica, then 2 (one GPU each)
    python -m benchmarks.serving.bench_serve scale --dummy-8b --replicas 2 --concurrency 256 \\
        --num-prompts 1024 --out benchmarks/results/<machine>/<date>-<topic>

    # our app alone, e.g. one variant of the serving path against an earlier compare
    python -m benchmarks.serving.bench_serve ours --dummy-8b --ingress-replicas 2 \\
        --concurrency 32 128 --num-prompts 256 512 --out benchmarks/results/<machine>/<date>-<topic>

`compare` writes `<out>/serving.json` (every stack in the order it ran, each with its call's
provenance) and, once it holds both stacks, `serving.png` and the ratio table;
`scale` writes `scaling.json` and `scaling.png`; `ours` writes `ours.json` and `ours.png`.
`--ingress-replicas N` (compare, scale, ours) runs N OpenAIIngress replicas; `--app-args JSON`
overrides serve_config.yaml's app args, e.g. `'{"engine_transport": "actor"}'`.
"""

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.lib import serving_stacks as stacks
from benchmarks.lib.report import provenance

MODULE = "benchmarks.serving.bench_serve"
PROVENANCE_KEYS = ("command", "commit", "date", "machine")


def cmd_run(args: argparse.Namespace) -> None:
    workload = stacks.workload_from_args(args)
    levels = stacks.run_levels(args.base_url, args.model, args.tokenizer or args.model, workload)
    result = stacks.StackResult(name=args.base_url, levels=levels)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        **provenance(MODULE, sys.argv[1:], None),
        "workload": workload.model_dump(),
        "result": result.model_dump(),
    }
    args.out.write_text(json.dumps(report, indent=2))
    stacks.plot([result], args.out.with_suffix(".png"), f"{args.model} @ {args.base_url}")
    print(args.out)


class Session:
    """One benchmark session: its stacks measured in turn, the report saved after each."""

    def __init__(
        self,
        args: argparse.Namespace,
        workload: stacks.Workload,
        report_name: str,
        resume: bool = False,
    ) -> None:
        """`resume`: add this session's stacks to the report already in `args.out`, if any
        (it must be of the same workload and app config)."""
        self.out: Path = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.report_path = self.out / report_name
        self.setup = stacks.engine_setup_from_args(args)
        self.app_options = stacks.OurAppOptions(
            ingress_replicas=args.ingress_replicas, app_args=args.app_args
        )
        self.config_dir = Path(tempfile.mkdtemp())
        config = stacks.our_config(self.setup, self.app_options)
        self.report: dict[str, Any] = {
            **provenance(MODULE, sys.argv[1:], config.applications[0].args),
            # Model and tokenizer paths are where this machine keeps them: the name says which.
            "engine": self.setup.model_dump(exclude={"model", "tokenizer"}),
            "ingress_replicas": stacks.ingress_replicas(config),
            "http_front": stacks.http_front(os.environ),
            "app_args": args.app_args,
            "workload": workload.model_dump(),
            "stacks": [],
        }
        if resume and self.report_path.exists():
            self.report = self._resumed(json.loads(self.report_path.read_text()))

    def _resumed(self, earlier: dict[str, Any]) -> dict[str, Any]:
        """The earlier report, checked to measure the same thing as this session would."""
        for key in ("engine", "workload", "app_config", "ingress_replicas", "http_front"):
            if earlier[key] != self.report[key]:
                raise SystemExit(f"{self.report_path} has another {key}: {earlier[key]}")
        earlier.setdefault("calls", [{k: earlier[k] for k in PROVENANCE_KEYS}])
        earlier["calls"].append({k: self.report[k] for k in PROVENANCE_KEYS})
        return earlier

    def bare(self, workload: stacks.Workload) -> stacks.StackResult:
        flags = stacks.openai_flags(self.report["app_config"])  # bare vLLM with our settings
        server = stacks.bare_vllm(self.setup, self.out / "bare.log", flags=flags)
        return self._measure("bare vLLM", server, stacks.BARE_PORT, workload)

    def ours(self, workload: stacks.Workload, replicas: int = 1) -> stacks.StackResult:
        log = self.out / f"ours-{replicas}.log"
        options = self.app_options.model_copy(update={"replicas": replicas})
        server = stacks.our_app(self.setup, options, log, self.config_dir)
        return self._measure(f"ours ({replicas} replica(s))", server, stacks.OURS_PORT, workload)

    def _measure(
        self, name: str, server: Any, port: int, workload: stacks.Workload
    ) -> stacks.StackResult:
        with server as startup_s:
            memory = stacks.gpu_memory_gb()
            levels = stacks.run_levels(
                f"http://127.0.0.1:{port}",
                self.setup.served_model_name,
                self.setup.tokenizer,
                workload,
            )
        result = stacks.StackResult(
            name=name, startup_s=round(startup_s, 1), gpu_memory_gb=memory, levels=levels
        )
        self.report["stacks"].append(result.model_dump())
        self.save()
        return result

    def save(self) -> None:
        self.report_path.write_text(json.dumps(self.report, indent=2))


def cmd_compare(args: argparse.Namespace) -> None:
    """Bare vLLM and our app with one replica, same engine args and workload, in the order
    `--stacks` names them (added to an earlier call's report in `--out`)."""
    workload = stacks.workload_from_args(args)
    session = Session(args, workload, "serving.json", resume=True)
    for name in args.stacks:
        if name == "bare":
            session.bare(workload)
        else:
            session.ours(workload)
    measured = {
        "bare": [r for r in session.report["stacks"] if r["name"] == "bare vLLM"],
        "ours": [r for r in session.report["stacks"] if r["name"].startswith("ours")],
    }
    if not (measured["bare"] and measured["ours"]):
        return
    bare, ours = (stacks.StackResult.model_validate(measured[k][-1]) for k in ("bare", "ours"))
    session.report["ratios"] = stacks.ratio_rows(bare, ours)
    session.save()
    title = f"{session.setup.served_model_name}: bare vLLM vs ours"
    stacks.plot([bare, ours], session.out / "serving.png", title)
    print(stacks.markdown_table(session.report["ratios"]))


def cmd_scale(args: argparse.Namespace) -> None:
    """Our app with one replica, then with N, same workload."""
    workload = stacks.workload_from_args(args)
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
    stacks.plot([one, many], session.out / "scaling.png", title)
    print(json.dumps(session.report["scaling"], indent=2))


def cmd_ours(args: argparse.Namespace) -> None:
    """Our app alone (`--replicas` LLM replicas), for trying one change of the serving path."""
    workload = stacks.workload_from_args(args)
    session = Session(args, workload, "ours.json")
    ours = session.ours(workload, args.replicas)
    stacks.plot([ours], session.out / "ours.png", f"{session.setup.served_model_name}: ours")
    for level in ours.levels:
        print(
            f"concurrency {level.concurrency}: {level.output_throughput:.0f} out tok/s, "
            f"TTFT p50 {level.ttft_ms['p50']:.1f} ms, ITL p99 {level.itl_ms['p99']:.1f} ms"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "compare", "scale", "ours"):
        stacks.add_workload_args(sub.add_parser(name))
    run = sub.choices["run"]
    run.add_argument("--base-url", required=True)
    run.add_argument("--model", required=True, help="served model name")
    run.add_argument("--tokenizer", help="tokenizer path (default: the model name)")
    run.add_argument("--out", type=Path, default=Path("benchmarks/results/serving-run.json"))
    for name in ("compare", "scale", "ours"):
        p = sub.choices[name]
        stacks.add_engine_args(p)
        p.add_argument(
            "--ingress-replicas", type=int, help="OpenAIIngress replicas (serve_config.yaml's)"
        )
        p.add_argument("--out", type=Path, default=Path("benchmarks/results/serving"))
    sub.choices["compare"].add_argument(
        "--stacks", nargs="+", choices=("bare", "ours"), default=["bare", "ours"]
    )
    sub.choices["scale"].add_argument("--replicas", type=int, default=2)
    sub.choices["ours"].add_argument("--replicas", type=int, default=1)
    args = parser.parse_args(argv)
    commands = {"run": cmd_run, "compare": cmd_compare, "scale": cmd_scale, "ours": cmd_ours}
    commands[args.command](args)


if __name__ == "__main__":
    main()
