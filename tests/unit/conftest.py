"""Fixtures of the unit tests that run the serving path on the fake engine."""

from pathlib import Path

import pytest

from tests.fake_engine import tiny_model


@pytest.fixture
def cpu_kv_cache_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """LLMServer sets the CPU backend's KV-cache size in the environment; keep it to the test."""
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model folder (config and tokenizer, no weights) for the fake engine."""
    return tiny_model(tmp_path_factory.mktemp("tiny-model"))
