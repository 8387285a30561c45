"""The optimisation demos' arithmetic on hand-made runs (their engines run in tests/integration)."""

import pytest

from benchmarks.demos.continuous_batching import Workload, summarise_run
from benchmarks.demos.paged_attention import account, replay
from benchmarks.demos.prefix_caching import shared_prefix_length
from benchmarks.lib.engine_lab import KVCacheLayout, LabRun

LAYOUT = KVCacheLayout(
    block_size=16,
    num_blocks=100,
    max_model_len=1024,
    max_num_seqs=8,
    num_layers=2,
    num_kv_heads=3,
    head_dim=4,
    dtype_bytes=2,
)


def completion(
    prompt: int, token_times: list[float], submitted: float = 0.0, finished: float | None = None
) -> LabRun:
    return LabRun(
        prompt_tokens=prompt,
        output_tokens=len(token_times),
        cached_prompt_tokens=0,
        text="",
        finish_reason="length",
        submitted_s=submitted,
        first_token_s=token_times[0] if token_times else None,
        finished_s=finished if finished is not None else token_times[-1],
        token_times_s=token_times,
    )


def test_kv_layout_counts_bytes_blocks_and_sequences() -> None:
    assert LAYOUT.kv_bytes_per_token == 2 * 2 * 3 * 4 * 2
    assert LAYOUT.capacity_tokens == 1600
    assert [LAYOUT.blocks_for(n) for n in (1, 16, 17, 32)] == [1, 1, 2, 2]
    assert LAYOUT.contiguous_sequences() == 1  # 1600 slots // 1024
    assert LAYOUT.paged_sequences(1024) == 1
    assert LAYOUT.paged_sequences(100) == 8  # 14 fit in memory; the scheduler caps at 8
    assert LAYOUT.paged_sequences(300) == 5  # 19 blocks each, 100 blocks


def test_replay_holds_whole_blocks_while_contiguous_holds_the_reservation() -> None:
    # Two requests: 10 prompt tokens + 8 outputs, and 20 prompt tokens + 1 output.
    first = completion(10, [1.0 + i for i in range(8)], finished=8.5)
    second = completion(20, [2.0], finished=3.0)
    samples = replay([first, second], LAYOUT, max_tokens=8)
    at = {s.t_s: s for s in samples}

    assert at[0.0].used == 30 and at[0.0].paged == (1 + 2) * 16
    assert at[0.0].contiguous_budget == (10 + 8) + (20 + 8)
    assert at[0.0].contiguous_max_len == 2 * 1024
    assert at[2.0].used == (10 + 2) + (20 + 1)  # tokens that arrived at t <= 2
    assert at[3.0].live_requests == 1  # the second has finished
    assert at[7.0].used == 17 and at[7.0].paged == 32  # 17 tokens cross into a second block
    assert at[8.5].live_requests == 0 and at[8.5].paged == 0

    paged = account(samples, "paged", LAYOUT, per_request=32)
    naive = account(samples, "contiguous_max_len", LAYOUT, per_request=1024)
    assert 0 < paged.waste_ratio < naive.waste_ratio < 1
    assert paged.peak_tokens == 48 and naive.peak_tokens == 2048
    assert paged.peak_mib == pytest.approx(48 * LAYOUT.kv_bytes_per_token / 1024**2, abs=0.01)
    assert (paged.requests_that_fit, naive.requests_that_fit) == (50, 1)


def test_shared_prefix_length_stops_at_the_first_difference() -> None:
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 9], [1, 2, 7]]) == 2
    assert shared_prefix_length([[1, 2], [1, 2, 3]]) == 2
    assert shared_prefix_length([[5, 6], [7]]) == 0


def test_workload_budgets_are_reproducible_and_in_range() -> None:
    workload = Workload(num_requests=50, min_tokens=8, max_tokens=16, seed=3)
    budgets = workload.budgets()
    assert budgets == workload.budgets()
    assert len(budgets) == 50 and set(budgets) <= set(range(8, 17)) and len(set(budgets)) > 1


def test_a_schedule_run_reports_makespan_throughput_and_latencies() -> None:
    runs = [completion(4, [0.5, 1.0], finished=1.0), completion(4, [0.5, 1.5, 3.0, 4.0])]
    run = summarise_run("static", runs, budgets=[2, 4])
    assert run.makespan_s == 4.0
    assert run.output_tokens == 6 and run.throughput_tok_s == 1.5
    assert run.latency_mean_s == 2.5
    assert [span.max_tokens for span in run.requests] == [2, 4]
