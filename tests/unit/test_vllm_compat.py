"""The vLLM-compat module on real vLLM classes (no engine): merging a request's DELTA outputs,
errors as vLLM's server renders them, constructors across versions, engine gauges."""

from prometheus_client import REGISTRY, Gauge
from vllm.outputs import CompletionOutput, RequestOutput

from serve_app import vllm_compat


def choice(index: int, text: str, ids: list[int], finish: str | None = None) -> CompletionOutput:
    return CompletionOutput(index, text, ids, None, None, finish_reason=finish)


def output(*choices: CompletionOutput, finished: bool = False) -> RequestOutput:
    return RequestOutput("r", None, [1, 2], None, list(choices), finished=finished)


def test_deltas_merge_choice_by_choice_into_the_first_output() -> None:
    head = output(choice(1, "B", [21]))
    merged = vllm_compat.merge_outputs(head, output(choice(0, "a", [10]), choice(1, "b", [22])))
    merged = vllm_compat.merge_outputs(
        merged, output(choice(0, "c", [11], "stop"), choice(1, "", [], "length"), finished=True)
    )
    assert merged is head and merged.finished
    assert {c.index: (c.text, list(c.token_ids), c.finish_reason) for c in merged.outputs} == {
        0: ("ac", [10, 11], "stop"),
        1: ("Bb", [21, 22], "length"),
    }
    assert [c.index for c in vllm_compat.sorted_choices(merged).outputs] == [0, 1]
    assert vllm_compat.new_tokens(merged) == 4
    assert vllm_compat.choices_with_tokens(output(choice(0, "", []), choice(1, "x", [5]))) == 1


def test_a_finished_choice_is_seen_before_the_request_finishes() -> None:
    assert vllm_compat.finished_choice(output(choice(0, "x", [1], "stop")))
    assert not vllm_compat.finished_choice(output(choice(0, "x", [1])))


def test_errors_come_out_as_vllms_server_renders_them() -> None:
    status, message, _ = vllm_compat.error_fields(vllm_compat.error_response(ValueError("bad")))
    assert (status, message) == (400, "bad")
    status, _, _ = vllm_compat.error_fields(vllm_compat.error_response(RuntimeError("boom")))
    assert status == 500


def test_constructor_arguments_a_version_lacks_are_left_out() -> None:
    class Old:
        def __init__(self, a: int, *, b: int = 0) -> None:
            self.a, self.b = a, b

    built = vllm_compat._construct(Old, 1, b=2, tool_strict_level="auto")
    assert (built.a, built.b) == (1, 2)


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
