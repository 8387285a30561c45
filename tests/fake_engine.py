"""A fake vLLM engine for unit tests of the serving path: real vLLM objects, no model weights.

- `tiny_model(folder)` writes a Llama-shaped `config.json` and a word-level tokenizer with a
  chat template: enough for vLLM to build its real config, renderer and serving classes.
- `FakeEngine` is what `LLMServer`'s `engine_factory` seam accepts in place of `AsyncLLM`:
  the real `VllmConfig` of the tiny model, and `generate` yielding DELTA `RequestOutput`s of
  made-up words, one token per step for each of the request's `n` choices (`max_tokens`,
  `n`, `logprobs` honoured), keeping every request's `SamplingParams`; a consumer that leaves
  early aborts the request, as vLLM's does.
- `InProcessHandle` stands in for the ingress's Serve handle to an `LLMServer` in this
  process, so the real `LLMServerClient` runs over it.
"""

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from vllm import AsyncEngineArgs, SamplingParams
from vllm.logprobs import Logprob
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.exceptions import EngineDeadError

from deployments.llm_server import LLMServer
from serve_app.core.config import AppConfig

VOCABULARY = 50
FIRST_WORD = 10
MAX_MODEL_LEN = 256
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def word(token: int) -> str:
    return f"w{token}"


def token_id(prompt: list[int], choice: int, step: int) -> int:
    """The made-up token a choice generates at a step: different per prompt and per choice."""
    return FIRST_WORD + (sum(prompt) + 7 * choice + step) % VOCABULARY


def tiny_model(folder: Path) -> Path:
    """A model folder vLLM can configure (no weights): a 2-layer Llama and its tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2} | {
        word(FIRST_WORD + i): FIRST_WORD + i for i in range(VOCABULARY)
    }
    vocab |= {"<think>": 3, "</think>": 4} | {f"pad{i}": i for i in range(5, FIRST_WORD)}
    tokenizer = Tokenizer(models.WordLevel(vocab, "[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", bos_token="<s>", eos_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": len(vocab),
        "max_position_embeddings": MAX_MODEL_LEN,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


class FakeEngineProcess:
    """The engine-core process as vLLM's process manager holds it: `kill()` ends the engine."""

    def __init__(self, engine: "FakeEngine") -> None:
        self._engine = engine

    def is_alive(self) -> bool:
        return not self._engine.errored

    def kill(self) -> None:
        self._engine.die()


@dataclass
class FakeEngine:
    """Stands in for `AsyncLLM`: `step_s` between steps; with `fail_at_step`, the request is
    refused (a ValueError, as vLLM raises) when it reaches that step; with `die_at_step`, the
    engine process dies there (every request gets `EngineDeadError`, as vLLM's do); with
    `hang_at_step`, the step never returns until the engine process is killed; with `script`,
    every choice says these vocabulary entries, one per step, instead of made-up words."""

    engine_kwargs: Mapping[str, Any]
    placement_group: Any = None
    metrics: str = "off"
    step_s: float = 0.0
    fail_at_step: int | None = None
    die_at_step: int | None = None
    hang_at_step: int | None = None
    script: list[str] | None = None
    requests: list[str] = field(default_factory=list)
    params: list[SamplingParams] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    errored: bool = False

    def __post_init__(self) -> None:
        args = AsyncEngineArgs(
            model=self.engine_kwargs["model"],
            max_model_len=MAX_MODEL_LEN,
            enforce_eager=True,
            load_format="dummy",
        )
        self.vllm_config = args.create_engine_config(UsageContext.OPENAI_API_SERVER)
        self.vllm_config.cache_config.num_gpu_blocks = 64
        self.model_config = self.vllm_config.model_config
        self._vocab = AutoTokenizer.from_pretrained(self.engine_kwargs["model"]).get_vocab()
        self._died = asyncio.Event()
        manager = SimpleNamespace(processes=[FakeEngineProcess(self)])
        self.engine_core = SimpleNamespace(resources=SimpleNamespace(engine_manager=manager))

    def die(self) -> None:
        self.errored = True
        self._died.set()

    @classmethod
    def factory(cls, **options: Any) -> Any:
        """An `engine_factory` that makes a FakeEngine with these options."""
        return functools.partial(cls, **options)

    async def generate(
        self, prompt: Mapping[str, Any], params: SamplingParams, request_id: str, **_: Any
    ) -> AsyncIterator[RequestOutput]:
        self.requests.append(request_id)
        self.params.append(params)
        prompt_ids = list(prompt["prompt_token_ids"])
        finished = False
        try:
            steps = params.max_tokens if self.script is None else len(self.script)
            for step in range(min(steps, params.max_tokens)):
                if self.step_s:
                    await asyncio.sleep(self.step_s)
                if step == self.die_at_step:
                    self.die()
                if step == self.hang_at_step:
                    await self._died.wait()
                if self.errored:
                    raise EngineDeadError()
                if step == self.fail_at_step:
                    raise ValueError(f"fake refusal at step {step}")
                last = step == min(steps, params.max_tokens) - 1
                outputs = [self._choice(prompt_ids, choice, step, last, params.logprobs)
                           for choice in range(params.n)]  # fmt: skip
                finished = last
                yield RequestOutput(request_id, None, prompt_ids, None, outputs, finished=last)
        finally:
            if not finished:
                self.aborted.append(request_id)

    def _choice(
        self, prompt: list[int], choice: int, step: int, last: bool, logprobs: int | None
    ) -> CompletionOutput:
        if self.script is None:
            token = token_id(prompt, choice, step)
            text = (" " if step else "") + word(token)
        else:
            text = self.script[step]
            token = self._vocab[text]
        top = None
        if logprobs is not None:
            top = [{token: Logprob(logprob=-0.25, rank=1, decoded_token=text)}]
        return CompletionOutput(
            index=choice,
            text=text,
            token_ids=[token],
            cumulative_logprob=None,
            logprobs=top,
            finish_reason=("length" if self.script is None else "stop") if last else None,
        )

    async def check_health(self) -> None:
        if self.errored:
            raise EngineDeadError()

    def shutdown(self) -> None:
        return None


async def start_llm_server(
    config: AppConfig, exits: list[bool] | None = None, **engine_options: Any
) -> tuple[Any, FakeEngine]:
    """An `LLMServer` (the class behind the Serve deployment) on a FakeEngine, and the engine;
    the server's process exits are appended to `exits` instead of happening."""
    cls = LLMServer.func_or_class
    server = cls.__new__(cls)
    exit_replica = (exits if exits is not None else []).append
    await server.__init__(
        config, "cpu", FakeEngine.factory(**engine_options), lambda: exit_replica(True)
    )
    return server, server._engine


class _Call:
    def __init__(self, method: Any) -> None:
        self._method = method

    def remote(self, *args: Any) -> Any:
        result = self._method(*args)
        return _Stream(result) if hasattr(result, "__aiter__") else result


class _Stream:
    """Serve's streaming response: iterate it, or cancel it."""

    def __init__(self, generator: Any) -> None:
        self._generator = generator
        self.cancelled = False

    def __aiter__(self) -> "_Stream":
        return self

    async def __anext__(self) -> Any:
        return await anext(self._generator)

    def cancel(self) -> None:
        self.cancelled = True
        self.closing = asyncio.ensure_future(self._generator.aclose())


class InProcessHandle:
    """A Serve handle to an LLMServer in this process: `handle.method.remote(...)`."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self.sent = 0
        self.requests: list[Any] = []  # the EngineRequests of `generate`, as the router saw them
        self.with_prompt: list[bool] = []  # per output sent: did it carry the prompt?

    def options(self, **_: Any) -> "InProcessHandle":
        return self

    def __getattr__(self, name: str) -> _Call:
        if name == "generate":
            return _Call(self._counted_generate)
        return _Call(getattr(self._server, name))

    async def _counted_generate(self, request: Any) -> AsyncIterator[Any]:
        self.requests.append(request)
        async for output in self._server.generate(request):
            self.sent += 1
            self.with_prompt.append(output.prompt_token_ids is not None)
            yield output
