"""Conversion between this project's payloads and vLLM's (real vLLM classes, no engine)."""

from prometheus_client import REGISTRY, Gauge
from vllm.logprobs import Logprob
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind

from serve_app.core.payloads import SamplingSpec
from serve_app.engine import vllm_compat


def output(completions: list[CompletionOutput]) -> RequestOutput:
    return RequestOutput(
        request_id="r",
        prompt=None,
        prompt_token_ids=[1, 2],
        prompt_logprobs=None,
        outputs=completions,
        finished=any(c.finish_reason for c in completions),
    )


def test_sampling_params_stream_deltas_with_every_setting() -> None:
    spec = SamplingSpec(
        max_tokens=9, n=2, temperature=0.3, top_p=0.8, seed=5, stop=("a",), logprobs=2, top_k=7
    )
    params = vllm_compat.sampling_params(spec)
    assert params.output_kind == RequestOutputKind.DELTA
    assert (params.max_tokens, params.n, params.temperature, params.top_p) == (9, 2, 0.3, 0.8)
    assert (params.seed, params.stop, params.logprobs, params.top_k) == (5, ["a"], 2, 7)


def test_chunk_carries_text_token_count_and_finish_reason() -> None:
    completion = CompletionOutput(
        index=1,
        text=" Paris",
        token_ids=[7042],
        cumulative_logprob=None,
        logprobs=None,
        finish_reason="stop",
    )
    chunk = vllm_compat.to_chunk(output([completion]), num_logprobs=None)
    (delta,) = chunk.choices
    assert (delta.index, delta.text, delta.num_tokens, delta.finish_reason) == (
        1,
        " Paris",
        1,
        "stop",
    )
    assert delta.logprobs is None


def test_logprobs_list_the_sampled_token_and_ranked_alternatives() -> None:
    position = {
        5: Logprob(logprob=-2.0, rank=3, decoded_token="c"),
        1: Logprob(logprob=-0.1, rank=1, decoded_token="a"),
        2: Logprob(logprob=-1.0, rank=2, decoded_token="b"),
    }
    completion = CompletionOutput(
        index=0,
        text="c",
        token_ids=[5],
        cumulative_logprob=None,
        logprobs=[position],
        finish_reason=None,
    )
    (delta,) = vllm_compat.to_chunk(output([completion]), num_logprobs=2).choices
    (token,) = delta.logprobs
    assert (token.token, token.logprob) == ("c", -2.0)
    assert [(t.token, t.logprob) for t in token.top] == [("a", -0.1), ("b", -1.0)]


def test_infinite_logprobs_become_finite() -> None:
    position = {3: Logprob(logprob=float("-inf"), rank=9, decoded_token="z")}
    completion = CompletionOutput(
        index=0,
        text="z",
        token_ids=[3],
        cumulative_logprob=None,
        logprobs=[position],
        finish_reason=None,
    )
    (delta,) = vllm_compat.to_chunk(output([completion]), num_logprobs=0).choices
    assert delta.logprobs[0].logprob == -9999.0
    assert delta.logprobs[0].top == []


def test_local_kv_cache_usage_reads_the_engine_gauge_of_this_process() -> None:
    assert vllm_compat.local_kv_cache_usage() is None  # no engine has reported yet
    gauge = Gauge(
        "vllm:kv_cache_usage_perc", "KV-cache usage", ["model_name", "engine"], registry=REGISTRY
    )
    try:
        gauge.labels(model_name="m", engine="0").set(0.25)
        assert vllm_compat.local_kv_cache_usage() == 0.25
    finally:
        REGISTRY.unregister(gauge)
