"""The benchmarks' own bookkeeping: sweep variants, prompt seeds, the ingress's TTFT, CPU
ranks, py-spy profiles."""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.lib import process_cpu, profiling
from benchmarks.lib.serving_stacks import (
    EngineSetup,
    Level,
    LevelResult,
    OurAppOptions,
    StackResult,
    Workload,
    our_config,
    workload_from_args,
)
from benchmarks.serving import bench_serve, concurrent_client, ingress_sweep
from benchmarks.serving.concurrent_client import RequestResult
from serve_app.core.config import LiveSettings
from serve_app.core.constants import LLM_SERVER_DEPLOYMENT
from serve_app.runtime.serve_config import deployment_section, to_dict
from tests.integration.figures import Figures


def test_a_variant_is_ingress_replicas_an_environment_preset_and_pacing() -> None:
    plain = ingress_sweep.Variant.parse("4")
    assert (plain.replicas, plain.env, plain.live_settings) == (4, {}, None)
    one_loop = ingress_sweep.Variant.parse("2:one-loop@8000")
    assert one_loop.replicas == 2
    assert one_loop.env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    assert one_loop.live_settings == LiveSettings(max_chunks_per_second=8000)
    unpaced = ingress_sweep.Variant.parse("1@none")
    assert unpaced.live_settings == LiveSettings(max_chunks_per_second=None)
    with pytest.raises(SystemExit, match="unknown preset"):
        ingress_sweep.Variant.parse("2:fast")


def test_a_variant_sets_the_llm_servers_user_config_only_when_it_names_pacing() -> None:
    setup = EngineSetup(model="m", served_model_name="m", tokenizer="m")
    base = OurAppOptions()

    def llm_server(spec: str) -> dict:
        config = our_config(setup, ingress_sweep.Variant.parse(spec).options(base))
        return deployment_section(to_dict(config), LLM_SERVER_DEPLOYMENT)

    assert "user_config" not in llm_server("2")
    assert llm_server("2@none")["user_config"] == {"max_chunks_per_second": None}


def test_every_level_gets_prompts_of_its_own() -> None:
    args = argparse.Namespace(
        concurrency=[1, 32, 128], num_prompts=[16, 256, 512], input_len=512, output_len=128,
        warmups=8,
    )  # fmt: skip
    seeds = [level.seed for level in workload_from_args(args).levels]
    assert len(set(seeds)) == 3


def test_the_ingress_ttft_comes_from_request_log_lines_written_since_the_offsets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingress_sweep, "SERVE_LOGS", tmp_path)
    log = tmp_path / "replica_llm_OpenAIIngress_abc.log"
    log.write_text("request_id=a route=/v1/completions status=ok ttft_s=9.0\n")
    offsets = ingress_sweep._log_offsets()
    with log.open("a") as sink:
        for ttft in (0.010, 0.020, 0.030):
            sink.write(f"INFO request_id=b route=/v1/completions status=ok ttft_s={ttft}\n")
        sink.write("INFO request_id=c route=/v1/completions status=aborted ttft_s=5.0\n")
    assert ingress_sweep._ingress_ttfts_ms(offsets)["p50"] == 20.0


def test_a_sweep_level_reads_the_ingress_ttft_of_its_measured_requests_not_its_warmups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warm-ups run first, on prompts of their own; only later log lines count."""
    monkeypatch.setattr(ingress_sweep, "SERVE_LOGS", tmp_path)
    log = tmp_path / "replica_llm_OpenAIIngress_abc.log"
    log.touch()
    calls: list[Workload] = []

    def run_levels(url: str, model: str, tokenizer: str, workload: Workload) -> list[LevelResult]:
        calls.append(workload)
        ttft = 9.0 if len(calls) == 1 else 0.02  # the warm-ups' first tokens are slow
        with log.open("a") as sink:
            sink.write(f"INFO route=/v1/completions status=ok ttft_s={ttft}\n" * 4)
        return [LevelResult(concurrency=2, completed=4, failed=0, duration_s=1,
                            request_throughput=4, output_throughput=40, ttft_ms={"p50": 20},
                            tpot_ms={}, itl_ms={}, e2el_ms={})]  # fmt: skip

    monkeypatch.setattr(ingress_sweep, "run_levels", run_levels)
    setup = EngineSetup(model="m", served_model_name="m", tokenizer="m", max_model_len=64)
    workload = Workload(levels=[Level(concurrency=2, num_prompts=4, seed=1)], warmups=3)
    (level,) = ingress_sweep.measure_levels(8000, setup, workload, 1000, tmp_path)
    assert level.ingress_ttft_ms["p50"] == 20.0
    warmups, measured = calls
    assert (warmups.levels[0].num_prompts, measured.warmups) == (3, 0)
    assert warmups.levels[0].seed != measured.levels[0].seed == 1001


def test_threads_rank_by_the_cpu_they_used_between_snapshots() -> None:
    def times(cpu_s: float) -> process_cpu.ThreadTimes:
        return process_cpu.ThreadTimes(process="p", thread="t", cpu_s=cpu_s)

    before = {(1, 1): times(10.0), (1, 2): times(0.0)}
    after = {(1, 1): times(11.0), (1, 2): times(3.0), (2, 5): times(4.0)}  # (2, 5): new thread
    ranked = process_cpu.busiest(before, after, seconds=2.0, top=2)
    assert [(u.pid, u.cores) for u in ranked] == [(2, 2.0), (1, 1.5)]


def test_a_profile_shares_samples_by_function_and_thread(tmp_path: Path) -> None:
    raw = tmp_path / "ingress-1.txt"
    raw.write_text(
        "thread (11): MainThread;run (loop.py:10);handle (app.py:5);dumps (json.py:3) 30\n"
        "thread (11): MainThread;run (loop.py:10);handle (app.py:7) 10\n"
        "thread (12): grpc;recv (grpc.py:2) 60\n"
    )
    profile = profiling.summarize("ingress-1", 1, raw, seconds=1.0)
    assert profile.samples == 100
    assert profile.busy_cores == 100 / profiling.SAMPLES_PER_S
    assert [(f.function, f.share) for f in profile.top_self] == [
        ("recv (grpc.py)", 0.6),
        ("dumps (json.py)", 0.3),
        ("handle (app.py)", 0.1),  # lines 5 and 7 are one function
    ]
    inclusive = {f.function: f.share for f in profile.top_inclusive}
    assert inclusive["run (loop.py)"] == 0.4
    assert inclusive["handle (app.py)"] == 0.4
    assert profile.threads == {"thread (12): grpc": 0.3, "thread (11): MainThread": 0.2}


BUSY_CHILD = """
import time
def spin():
    while True:
        sum(range(1000))
print("ready", flush=True)
spin()
"""


@pytest.mark.skipif(profiling.py_spy() is None, reason="needs py-spy (dev dependency)")
def test_profiled_samples_a_running_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = subprocess.Popen([sys.executable, "-c", BUSY_CHILD], stdout=subprocess.PIPE, text=True)
    idle = subprocess.Popen(["sleep", "60"])  # not Python: py-spy cannot read it
    try:
        assert busy.stdout is not None and busy.stdout.readline() == "ready\n"
        targets = {"busy": busy.pid, "not-python": idle.pid}
        monkeypatch.setattr(profiling, "serving_processes", lambda: targets)
        with profiling.profiled(tmp_path) as profiles:
            time.sleep(2)
    finally:
        busy.kill()
        idle.kill()
    assert profiles["busy"].error is None
    assert profiles["busy"].busy_cores > 0.3  # one core, shared with whatever else runs
    assert profiles["busy"].top_self[0].function == "spin (<string>)"
    assert (tmp_path / "busy.txt").exists()
    assert profiles["not-python"].samples == 0
    assert profiles["not-python"].error


def test_profiled_processes_are_our_replicas_the_engine_and_bare_vllm() -> None:
    def short(process: str) -> list[str]:
        return [name for name, matches in profiling.TARGETS.items() if matches(process)]

    assert short("ray::ServeReplica:llm:LLMServer") == ["llm-server"]
    assert short("ray::ServeReplica:llm:OpenAIIngress") == ["ingress"]
    assert short("VLLM::EngineCore") == ["engine-core"]
    assert short("python3 -m vllm.entrypoints.openai.api_server") == ["bare-api-server"]
    assert short("ray::ServeController") == []


def test_the_engine_lab_streams_deltas_with_every_sampling_setting() -> None:
    from vllm.sampling_params import RequestOutputKind

    from benchmarks.lib.engine_lab import sampling_params
    from benchmarks.lib.sampling import SamplingSpec

    spec = SamplingSpec(
        max_tokens=9, n=2, temperature=0.3, top_p=0.8, seed=5, stop=("a",), logprobs=2, top_k=7
    )
    params = sampling_params(spec)
    assert params.output_kind == RequestOutputKind.DELTA
    assert (params.max_tokens, params.n, params.temperature, params.top_p) == (9, 2, 0.3, 0.8)
    assert (params.seed, params.stop, params.logprobs, params.top_k) == (5, ["a"], 2, 7)


def test_a_compare_in_two_calls_holds_both_stacks_in_run_order_and_their_ratios(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each stack measured in a call of its own (`--stacks`): the second call adds to the
    first's report; the ratios come once both are there. Only the measuring is faked."""

    def measured(throughput: float) -> Any:
        def measure(session: bench_serve.Session, workload: Any, *_: Any) -> StackResult:
            name = "bare vLLM" if throughput == 100 else "ours (1 replica(s))"
            level = LevelResult(
                concurrency=1, completed=8, failed=0, duration_s=1, request_throughput=8,
                output_throughput=throughput, ttft_ms={"p50": 20}, tpot_ms={}, itl_ms={"p99": 5},
                e2el_ms={},
            )  # fmt: skip
            result = StackResult(name=name, levels=[level])
            session.report["stacks"].append(result.model_dump())
            session.save()
            return result

        return measure

    monkeypatch.setattr(bench_serve.Session, "bare", measured(100))
    monkeypatch.setattr(bench_serve.Session, "ours", measured(97))
    common = ["--concurrency", "1", "--num-prompts", "8", "--out", str(tmp_path)]
    bench_serve.main(["compare", "--stacks", "ours", *common])
    report = json.loads((tmp_path / "serving.json").read_text())
    assert "ratios" not in report
    bench_serve.main(["compare", "--stacks", "bare", *common])
    report = json.loads((tmp_path / "serving.json").read_text())
    assert [stack["name"] for stack in report["stacks"]] == ["ours (1 replica(s))", "bare vLLM"]
    assert len(report["calls"]) == 2
    assert report["ratios"][0]["throughput_ratio"] == 0.97
    # A later call measuring something else is refused, the report kept.
    with pytest.raises(SystemExit, match="workload"):
        bench_serve.main(["compare", "--stacks", "bare", *common, "--input-len", "64"])


def test_a_concurrent_client_summary_counts_failures_and_averages_the_rest() -> None:
    ok = RequestResult(index=0, question="q", status=200, seconds=2.0, completion_tokens=10,
                       tokens_per_second=5.0)  # fmt: skip
    refused = RequestResult(index=1, question="q", status=503, seconds=0.01, error="busy")
    summary = concurrent_client.summarise([ok, refused, refused], wall_s=2.0)
    assert (summary.succeeded, summary.failed_by_status) == (1, {"503": 2})
    assert (summary.mean_request_s, summary.max_request_s) == (2.0, 2.0)
    assert concurrent_client.summarise([refused], wall_s=1.0).mean_request_s is None


def test_the_integration_figures_are_saved_with_their_provenance(tmp_path: Path) -> None:
    figures = Figures()
    figures.record("ingress replica killed", replaced_after_s=4.2)
    figures.record("ingress replica killed", replaced_after_s=3.9)
    figures.save(tmp_path / "figures.json")
    saved = json.loads((tmp_path / "figures.json").read_text())
    assert {"command", "commit", "date", "machine"} <= set(saved)
    assert saved["figures"] == {
        "ingress replica killed": [{"replaced_after_s": 4.2}, {"replaced_after_s": 3.9}]
    }
