"""The sampling settings of the engine demos (pydantic only: the walkthrough imports it before
it times the heavy imports)."""

from pydantic import BaseModel, ConfigDict, Field


class SamplingSpec(BaseModel):
    """Sampling settings of one demo request (`engine_lab.sampling_params` makes vLLM's)."""

    model_config = ConfigDict(frozen=True)

    max_tokens: int
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = Field(None, description="Top alternatives per token; None: no logprobs.")
    # vLLM extensions.
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
