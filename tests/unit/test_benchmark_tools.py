"""The benchmarks' own bookkeeping: sweep variants, prompt seeds, the ingress's TTFT, CPU ranks."""

import argparse
from pathlib import Path

import pytest

from benchmarks import ingress_sweep, process_cpu
from benchmarks.serving import workload_from_args


def test_a_variant_is_a_replica_count_and_an_optional_environment_preset() -> None:
    plain = ingress_sweep.IngressVariant.parse("4")
    assert (plain.replicas, plain.env) == (4, {})
    one_loop = ingress_sweep.IngressVariant.parse("2:one-loop")
    assert one_loop.replicas == 2
    assert one_loop.env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    with pytest.raises(SystemExit, match="unknown preset"):
        ingress_sweep.IngressVariant.parse("2:fast")


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


def test_threads_rank_by_the_cpu_they_used_between_snapshots() -> None:
    def times(cpu_s: float) -> process_cpu.ThreadTimes:
        return process_cpu.ThreadTimes(process="p", thread="t", cpu_s=cpu_s)

    before = {(1, 1): times(10.0), (1, 2): times(0.0)}
    after = {(1, 1): times(11.0), (1, 2): times(3.0), (2, 5): times(4.0)}  # (2, 5): new thread
    ranked = process_cpu.busiest(before, after, seconds=2.0, top=2)
    assert [(u.pid, u.cores) for u in ranked] == [(2, 2.0), (1, 1.5)]
