"""vLLM engine arguments derived from the app config."""

from serve_app.core.config import AppConfig
from serve_app.engine.engine_args import build_engine_kwargs, set_cpu_kvcache_space


def config(**kwargs: object) -> AppConfig:
    return AppConfig.model_validate({"model": "org/model", **kwargs})


def test_cpu_engine_runs_eager_single_process() -> None:
    kwargs = build_engine_kwargs(config(), "cpu")
    assert kwargs["enforce_eager"] is True
    assert kwargs["model"] == kwargs["tokenizer"] == "org/model"
    assert "distributed_executor_backend" not in kwargs
    assert "max_model_len" not in kwargs


def test_gpu_engine_keeps_cuda_graphs() -> None:
    assert "enforce_eager" not in build_engine_kwargs(config(), "gpu")


def test_tensor_parallel_engine_uses_the_ray_executor() -> None:
    kwargs = build_engine_kwargs(config(tensor_parallel_size=2), "gpu")
    assert kwargs["tensor_parallel_size"] == 2
    assert kwargs["distributed_executor_backend"] == "ray"


def test_engine_kwargs_win_over_defaults() -> None:
    cfg = config(engine_kwargs={"enforce_eager": False, "load_format": "dummy"}, max_model_len=512)
    kwargs = build_engine_kwargs(cfg, "cpu")
    assert kwargs["enforce_eager"] is False
    assert kwargs["load_format"] == "dummy"
    assert kwargs["max_model_len"] == 512


def test_served_name_and_tokenizer_are_passed() -> None:
    kwargs = build_engine_kwargs(config(served_model_name="chat", tokenizer="org/tok"), "gpu")
    assert kwargs["served_model_name"] == "chat"
    assert kwargs["tokenizer"] == "org/tok"


def test_cpu_kvcache_space_comes_from_the_config_unless_already_set() -> None:
    env: dict[str, str] = {}
    set_cpu_kvcache_space(config(cpu_kvcache_gib=2.5), env)
    assert env == {"VLLM_CPU_KVCACHE_SPACE": "2.5"}
    set_cpu_kvcache_space(config(cpu_kvcache_gib=4), env)
    assert env == {"VLLM_CPU_KVCACHE_SPACE": "2.5"}
