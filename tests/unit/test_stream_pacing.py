"""Chunk pacing: per-token chunks under budget, merged chunks over it, never a lost token."""

from serve_app.core.payloads import ChoiceDelta, GenerationChunk, TokenLogprob
from serve_app.engine.pacing import ChunkPacer, MergeFactors, PendingChunk


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def chunk(text: str, index: int = 0, finish: str | None = None) -> GenerationChunk:
    token = TokenLogprob(token=text, logprob=-0.5, top=[])
    delta = ChoiceDelta(
        index=index, text=text, num_tokens=1, logprobs=[token], finish_reason=finish
    )
    return GenerationChunk(choices=[delta])


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
    pending = PendingChunk()
    pending.add(chunk("The"))
    assert pending.ready(tokens_per_chunk=3)
    assert pending.take().choices[0].text == "The"
    pending.add(chunk(" capital"))
    pending.add(chunk(" of"))
    assert not pending.ready(tokens_per_chunk=3)
    pending.add(chunk(" France"))
    assert pending.ready(tokens_per_chunk=3)
    merged = pending.take().choices[0]
    assert (merged.text, merged.num_tokens) == (" capital of France", 3)
    assert [t.token for t in merged.logprobs] == [" capital", " of", " France"]


def test_finished_choice_leaves_at_once() -> None:
    pending = PendingChunk()
    pending.add(chunk("a"))
    pending.take()
    pending.add(chunk("b", finish="stop"))
    assert pending.ready(tokens_per_chunk=10)
    assert pending.take().choices[0].finish_reason == "stop"
    assert not pending.ready(tokens_per_chunk=1)


def test_choices_of_several_completions_merge_separately() -> None:
    pending = PendingChunk()
    pending.add(chunk("x", index=0))
    pending.take()
    for text in ("a", "b"):
        pending.add(chunk(text, index=0))
        pending.add(chunk(text.upper(), index=1))
    merged = {d.index: d.text for d in pending.take().choices}
    assert merged == {0: "ab", 1: "AB"}


def test_merge_factors_tell_vllm_merging_from_pacing() -> None:
    factors = MergeFactors()
    two_tokens = GenerationChunk(
        choices=[ChoiceDelta(index=0, text="ab", num_tokens=2, logprobs=None)]
    )
    factors.from_engine(two_tokens)  # vLLM merged two steps
    factors.from_engine(chunk("c"))
    factors.from_engine(chunk("d", finish="length"))
    pending = PendingChunk()
    pending.add(two_tokens)
    factors.sent(pending.take())
    pending.add(chunk("c"))
    pending.add(chunk("d", finish="length"))  # paced: two outputs, one chunk
    factors.sent(pending.take())
    assert factors.ratios() == {"engine": 4 / 3, "sent": 2.0}


def test_merge_factors_count_each_choice_and_skip_empty_streams() -> None:
    assert MergeFactors().ratios() == {}
    factors = MergeFactors()
    both = GenerationChunk(choices=[*chunk("a").choices, *chunk("b", index=1).choices])
    factors.from_engine(both)
    factors.sent(both)
    assert factors.ratios() == {"engine": 1.0, "sent": 1.0}  # two choices, a token each
