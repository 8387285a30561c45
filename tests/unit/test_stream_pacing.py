"""Chunk pacing: per-token chunks under budget, merged chunks over it, never a lost token."""

from vllm.logprobs import Logprob
from vllm.outputs import CompletionOutput, RequestOutput

from serve_app.engine.pacing import ChunkPacer, MergeFactors, PendingOutput


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def choice(
    text: str, index: int = 0, finish: str | None = None, tokens: int = 1
) -> CompletionOutput:
    ids = list(range(100, 100 + tokens))
    logprobs = [{i: Logprob(logprob=-0.5, rank=1, decoded_token=text)} for i in ids]
    return CompletionOutput(index, text, ids, None, logprobs, finish_reason=finish)


def output(*choices: CompletionOutput, finished: bool | None = None) -> RequestOutput:
    """A DELTA output; finished (by default) when its choices finish."""
    if finished is None:
        finished = all(c.finish_reason for c in choices)
    return RequestOutput("r", None, [1], None, list(choices), finished=finished)


def chunk(text: str, index: int = 0, finish: str | None = None) -> RequestOutput:
    return output(choice(text, index, finish))


def outputs_per_second(pacer: ChunkPacer, clock: FakeClock, rate: float, seconds: float) -> None:
    for _ in range(int(rate * seconds)):
        clock.now += 1 / rate
        pacer.saw_output()


def test_under_budget_every_token_is_its_own_chunk() -> None:
    clock = FakeClock()
    pacer = ChunkPacer(max_chunks_per_s=1000, clock=clock)
    outputs_per_second(pacer, clock, rate=800, seconds=2)
    assert pacer.tokens_per_chunk == 1


def test_over_budget_tokens_merge_in_proportion() -> None:
    clock = FakeClock()
    pacer = ChunkPacer(max_chunks_per_s=2000, clock=clock)
    outputs_per_second(pacer, clock, rate=7700, seconds=2)
    assert pacer.tokens_per_chunk == 4
    outputs_per_second(pacer, clock, rate=500, seconds=2)
    assert pacer.tokens_per_chunk == 1


def test_no_budget_never_merges() -> None:
    clock = FakeClock()
    pacer = ChunkPacer(max_chunks_per_s=None, clock=clock)
    outputs_per_second(pacer, clock, rate=100_000, seconds=1)
    assert pacer.tokens_per_chunk == 1


def test_first_token_leaves_at_once_then_tokens_gather() -> None:
    pending = PendingOutput()
    pending.add(chunk("The"))
    assert pending.ready(tokens_per_chunk=3)
    assert pending.take().outputs[0].text == "The"
    pending.add(chunk(" capital"))
    pending.add(chunk(" of"))
    assert not pending.ready(tokens_per_chunk=3)
    pending.add(chunk(" France"))
    assert pending.ready(tokens_per_chunk=3)
    merged = pending.take().outputs[0]
    assert (merged.text, len(merged.token_ids)) == (" capital of France", 3)
    assert len(merged.logprobs) == 3


def test_finished_choice_leaves_at_once() -> None:
    pending = PendingOutput()
    pending.add(chunk("a"))
    pending.take()
    pending.add(chunk("b", finish="stop"))
    assert pending.ready(tokens_per_chunk=10)
    assert pending.take().outputs[0].finish_reason == "stop"
    assert not pending.ready(tokens_per_chunk=1)
    assert pending.take() is None


def test_choices_of_several_completions_merge_separately() -> None:
    pending = PendingOutput()
    pending.add(chunk("x", index=0))
    pending.take()
    for text in ("a", "b"):
        pending.add(chunk(text, index=0))
        pending.add(chunk(text.upper(), index=1))
    merged = {c.index: c.text for c in pending.take().outputs}
    assert merged == {0: "ab", 1: "AB"}


def test_merge_factors_tell_vllm_merging_from_pacing() -> None:
    factors = MergeFactors()
    two_tokens = output(choice("ab", tokens=2))
    factors.from_engine(two_tokens)  # vLLM merged two steps
    factors.from_engine(chunk("c"))
    factors.from_engine(chunk("d", finish="length"))
    pending = PendingOutput()
    pending.add(two_tokens)
    factors.sent(pending.take())
    pending.add(chunk("c"))
    pending.add(chunk("d", finish="length"))  # paced: two outputs, one chunk
    factors.sent(pending.take())
    assert factors.ratios() == {"engine": 4 / 3, "sent": 2.0}


def test_merge_factors_count_each_choice_and_skip_empty_streams() -> None:
    assert MergeFactors().ratios() == {}
    factors = MergeFactors()
    both = output(choice("a"), choice("b", index=1))
    factors.from_engine(both)
    factors.sent(both)
    assert factors.ratios() == {"engine": 1.0, "sent": 1.0}  # two choices, a token each


def test_a_collected_stream_sends_its_first_output_then_only_the_end() -> None:
    pending = PendingOutput(collect=True)
    pending.add(chunk("a"))
    assert pending.ready(tokens_per_chunk=1)
    pending.take()
    for text in ("b", "c"):
        pending.add(chunk(text))
        assert not pending.ready(tokens_per_chunk=1)
    pending.add(output(choice("d", index=1, finish="stop"), finished=False))  # 1 of 2 done
    assert not pending.ready(tokens_per_chunk=1)
    pending.add(output(choice("e", finish="stop"), choice("", index=1, finish="stop")))
    assert pending.ready(tokens_per_chunk=1)
    assert {c.index: c.text for c in pending.take().outputs} == {0: "bce", 1: "d"}
