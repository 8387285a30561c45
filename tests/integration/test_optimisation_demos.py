"""The guide made executable: the walkthrough and the optimisation demos, run for real on CPU.

Each engine demo runs as its users run it (`python -m ...` in a subprocess, CI-sized with
`--quick`, its own engine on the default model); the concurrent client talks to the
session's real app. The assertions are on the measured figures, not only on their shape.
"""

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.serving import concurrent_client
from serve_app.core.config import AppConfig
from serve_app.core.default_model import prepare_default_model
from serve_app.engine.engine_args import build_engine_kwargs

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 900
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REFILL_S = 0.5  # from a slot freeing to the next request entering it, at most


def _run(module: str, *args: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    return completed.stdout


def _load(path: Path) -> dict[str, Any]:
    assert path.is_file(), path
    return json.loads(path.read_text())


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path


def _default_model_kv_bytes_per_token() -> int:
    """2 x layers x KV heads x head dim x bytes per value, from the model's own config.json:
    bf16 (2 bytes), or float32 (4) where the engine runs it (a CPU without native bf16)."""
    config = json.loads((prepare_default_model() / "config.json").read_text())
    dtype = build_engine_kwargs(AppConfig(), "cpu").get("dtype", "bfloat16")
    value_bytes = {"bfloat16": 2, "float32": 4}[dtype]
    return (
        2 * config["num_hidden_layers"] * config["num_key_value_heads"] * config["head_dim"]
        * value_bytes
    )  # fmt: skip


def test_walkthrough_runs_the_ten_steps_and_measures_the_optimisations(tmp_path: Path) -> None:
    out = _run(
        "benchmarks.demos.walkthrough", "--quick", "--json", str(tmp_path / "walkthrough.json")
    )
    report = _load(tmp_path / "walkthrough.json")

    assert [step["number"] for step in report["steps"]] == list(range(1, 11))
    for number in range(1, 11):
        assert f"Step {number}/10" in out
    assert report["environment"]["accelerator"] == "cpu"
    assert report["environment"]["machine"]["vllm"]
    assert report["model_load"]["engine_start_s"] > 0
    assert report["model_load"]["rss_gib"] > 0.2

    paged = report["paged_attention"]
    assert paged["kv_bytes_per_token"] == _default_model_kv_bytes_per_token()
    assert paged["capacity_tokens"] == paged["num_blocks"] * paged["block_size"]
    assert 0.9 < paged["kv_cache_gib"] <= 1.0  # VLLM_CPU_KVCACHE_SPACE=1 (the default)
    by_length = {row["sequence_tokens"]: row for row in paged["fits"]}
    at_max = by_length[paged["max_model_len"]]
    assert (
        at_max["paged"]
        == at_max["contiguous"]
        == paged["capacity_tokens"] // at_max["sequence_tokens"]
    )
    assert by_length[512]["paged"] > 10 * by_length[512]["contiguous"]

    max_tokens = report["sampling"]["max_tokens"]
    outputs = report["outputs"]
    assert len(outputs) == len(report["prompts"]) == 5
    for output in outputs:
        assert 1 <= output["output_tokens"] <= max_tokens
        assert output["finish_reason"] in ("stop", "length")
        assert output["text"].strip()
        assert 0 < output["ttft_s"] < output["latency_s"]
    assert report["batch"]["output_tokens"] == sum(o["output_tokens"] for o in outputs)
    assert report["streaming"]["output_tokens"] >= 1
    assert 0 < report["streaming"]["ttft_s"] < report["streaming"]["seconds"]

    batching = report["impact"]["continuous_batching"]
    assert set(batching["throughput_tok_s"]) == {"static", "continuous_slots", "continuous_all"}
    assert all(value > 0 for value in batching["throughput_tok_s"].values())
    prefix = report["impact"]["prefix_caching"]
    assert prefix["ttft_on_s"] > 0 and prefix["ttft_off_s"] > 0  # reported; compared: a timing
    assert prefix["cached_tokens_on"] > 0
    assert prefix["cached_tokens_off"] == 0
    assert len(report["summary"]) == 8


def test_continuous_batching_beats_static_batching_on_mixed_lengths(tmp_path: Path) -> None:
    _run("benchmarks.demos.continuous_batching", "--quick", "--out", str(tmp_path))
    result = _load(tmp_path / "continuous_batching.json")
    _assert_png(tmp_path / "continuous_batching.png")

    batch_size = result["workload"]["batch_size"]
    modes = {mode["mode"]: mode for mode in result["modes"]}
    assert set(modes) == {"static", "continuous_slots", "continuous_all"}
    for mode in modes.values():
        for run in mode["runs"]:
            spans = run["requests"]
            assert len(spans) == result["workload"]["num_requests"]
            # ignore_eos: every request generates exactly its own budget, in every schedule.
            assert [s["output_tokens"] for s in spans] == [s["max_tokens"] for s in spans]
    static = modes["static"]["runs"][0]["requests"]
    batches = [static[i : i + batch_size] for i in range(0, len(static), batch_size)]
    for previous, batch in itertools.pairwise(batches):
        # Static: a batch starts only when the longest request of the one before has finished.
        longest = max(s["finished_s"] for s in previous)
        assert all(longest <= s["entered_s"] < longest + REFILL_S for s in batch)
    slots = modes["continuous_slots"]["runs"][0]["requests"]
    finishes = sorted(s["finished_s"] for s in slots)
    for span in slots[batch_size:]:
        # Continuous: a waiting request takes a slot the moment any request finishes.
        assert any(f <= span["entered_s"] < f + REFILL_S for f in finishes)
    for span in slots:
        running = [s for s in slots if s["entered_s"] <= span["entered_s"] < s["finished_s"]]
        assert len(running) <= batch_size

    # The speedups are timings: the benchmark reports them (benchmarks/results); on the 2-core
    # CI machine continuous_all_speedup went from 1.1x to 0.94x between runs, so the test
    # asserts the mechanism above, not the figure.
    assert result["continuous_all_speedup"] > 0


def test_paged_kv_cache_wastes_less_than_contiguous_preallocation(tmp_path: Path) -> None:
    _run("benchmarks.demos.paged_attention", "--quick", "--out", str(tmp_path))
    result = _load(tmp_path / "paged_attention.json")
    _assert_png(tmp_path / "paged_attention.png")

    layout = result["layout"]
    assert result["kv_bytes_per_token"] == _default_model_kv_bytes_per_token()
    for sample in result["timeline"]:
        # Paging rounds each live sequence up to whole blocks, never more than one block over.
        assert sample["used"] <= sample["paged"]
        assert sample["paged"] - sample["used"] < layout["block_size"] * sample["live_requests"] + 1
        assert sample["contiguous_max_len"] == sample["live_requests"] * layout["max_model_len"]
    paged, naive = result["paged"], result["contiguous_max_len"]
    # The replay matches what the engine itself reported holding, within a block a request.
    assert result["engine_timeline"]
    assert 0 < result["engine_peak_tokens"] < naive["peak_tokens"]
    tolerance = layout["block_size"] * result["workload"]["num_requests"]
    assert abs(result["engine_peak_tokens"] - paged["peak_tokens"]) <= tolerance
    assert 0 <= paged["waste_ratio"] < naive["waste_ratio"]
    assert paged["peak_tokens"] < naive["peak_tokens"]
    assert paged["requests_that_fit"] > naive["requests_that_fit"]


def test_prefix_cache_serves_the_shared_context_from_the_cache(tmp_path: Path) -> None:
    """The mechanism: every request after the first finds the shared prefix's whole blocks
    cached with the cache on, none with it off. The time to first token it saves is a timing
    on a loaded 2-core machine: the demo reports it, the benchmark measures it."""
    _run("benchmarks.demos.prefix_caching", "--quick", "--out", str(tmp_path))
    result = _load(tmp_path / "prefix_caching.json")
    _assert_png(tmp_path / "prefix_caching.png")

    on, off = result["on"], result["off"]
    cacheable = result["shared_prefix_tokens"] // result["block_size"] * result["block_size"]
    assert cacheable > 0
    for run in on["runs"]:
        assert run["cached_tokens"][0] == 0  # the first request after a reset finds nothing
        assert all(tokens >= cacheable for tokens in run["cached_tokens"][1:])
    for run in off["runs"]:
        assert set(run["cached_tokens"]) == {0}
    assert on["ttft_median_s"] > 0 and off["ttft_median_s"] > 0


def test_concurrent_client_gets_every_answer_with_its_speed(
    base_url: str, model: str, tmp_path: Path
) -> None:
    result = concurrent_client.main(
        ["--base-url", base_url, "--n", "5", "--max-tokens", "16", "--out", str(tmp_path)]
    )
    _assert_png(tmp_path / "concurrent_client.png")
    assert _load(tmp_path / "concurrent_client.json")["summary"] == result.summary.model_dump()

    assert result.model == model  # the first id of GET /v1/models
    assert [r.index for r in result.results] == list(range(5))
    for request in result.results:
        assert request.status == 200, request.error
        assert 1 <= request.completion_tokens <= 16
        assert request.tokens_per_second and request.tokens_per_second > 0
        assert request.answer
    assert result.summary.succeeded == 5
    # Served together, not one after the other: the whole took less than the sum of its parts.
    assert result.summary.wall_s < sum(r.seconds for r in result.results)
