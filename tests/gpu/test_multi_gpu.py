"""Across GPUs: one tensor-parallel replica over two, or two replicas with one each; and a
tensor-parallel replica refused at once when fewer GPUs are free (on any GPU machine)."""

import re
import time

import httpx
import openai
import pytest
import ray

from serve_app.observability.gpu_stats import read_gpu_memory
from serve_app.runtime.runner import DeployFailedError
from tests.gpu.conftest import ask_concurrently, deployed, dummy_8b, gpu_count


@pytest.mark.gpus(2)
def test_tensor_parallel_replica_spans_both_gpus(
    ray_cluster: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    model = dummy_8b(tmp_path_factory)
    args = {
        "model": model,
        "served_model_name": "llama3-8b-shape",
        "tensor_parallel_size": 2,
        "max_model_len": 2048,
        "engine_kwargs": {"load_format": "dummy", "enforce_eager": True},
    }
    with deployed(args) as url:
        assert httpx.get(f"{url}/health").json()["tensor_parallel_size"] == 2
        # Both GPUs hold half of the 16 GB of weights plus KV cache.
        per_gpu = [read_gpu_memory([i]).used_gb for i in (0, 1)]
        assert all(used > 8 for used in per_gpu), per_gpu
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        chunks = list(
            client.completions.create(
                model="llama3-8b-shape",
                prompt="Hello",
                max_tokens=32,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
        )
        assert chunks[-1].usage.completion_tokens == 32
        assert any(c.choices and c.choices[0].finish_reason == "length" for c in chunks)


@pytest.mark.gpus(1)
def test_tensor_parallel_fails_fast_when_only_one_gpu_is_free(
    ray_cluster: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    @ray.remote(num_gpus=1)
    class GPUHolder:
        def ready(self) -> bool:
            return True

    gpus = gpu_count()
    holders = [GPUHolder.remote() for _ in range(gpus - 1)]  # leave exactly one free
    ray.get([holder.ready.remote() for holder in holders])
    args = {"model": dummy_8b(tmp_path_factory), "tensor_parallel_size": 2}
    reason = (
        "needs 2 free GPUs, but only 1 are free"
        if gpus > 1
        else r"needs 2 GPUs on one node \(STRICT_PACK\), but the largest node has 1"
    )
    started = time.monotonic()
    try:
        with (
            pytest.raises(DeployFailedError, match=reason),
            deployed(args),
        ):
            pass
    finally:
        for holder in holders:
            ray.kill(holder)
    assert time.monotonic() - started < 120


QUEUE_WAITS = re.compile(
    r'ray_llm_queue_wait_seconds_count\{[^}]*replica="([^"]+)"[^}]*\} ([0-9.e+]+)'
)
EXPORT_INTERVAL_S = 12  # over one of Ray's metric exports
REQUESTS = 64


def queue_waits(url: str) -> dict[str, float]:
    """Requests each LLM-server replica started (its queue-wait count), as exported now."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {match.group(1): float(match.group(2)) for match in QUEUE_WAITS.finditer(text)}


def settled_queue_waits(url: str) -> dict[str, float]:
    """The counts once both replicas' warm-up requests are exported and nothing grows."""
    deadline = time.monotonic() + 120
    last = queue_waits(url)
    while True:
        time.sleep(EXPORT_INTERVAL_S)
        counts = queue_waits(url)
        if len(counts) == 2 and counts == last:
            return counts
        assert time.monotonic() < deadline, f"queue-wait counts not settled: {counts}"
        last = counts


@pytest.mark.gpus(2)
def test_two_replicas_on_two_gpus_share_the_traffic(ray_cluster: None) -> None:
    args = {"accelerator": "gpu", "engine_kwargs": {"gpu_memory_utilization": 0.3}}
    replicas = {"autoscaling_config": {"min_replicas": 2, "max_replicas": 2}}
    with deployed(args, replicas) as url:
        before = settled_queue_waits(url)
        assert all("Paris" in answer for answer in ask_concurrently(url, REQUESTS))
        deadline = time.monotonic() + 60
        while True:
            after = queue_waits(url)
            served = {replica: after[replica] - before[replica] for replica in before}
            if sum(served.values()) >= REQUESTS or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert sum(served.values()) == REQUESTS, served
        # Each replica took a fair part of this load (power-of-two routing: about half each).
        assert all(count >= REQUESTS / 8 for count in served.values()), served
