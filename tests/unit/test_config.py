"""AppConfig: defaults, the guide's environment overrides, and the shipped serve_config.yaml."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from serve_app.core.config import AppConfig
from serve_app.core.constants import DEFAULT_MAX_CHUNKS_PER_SECOND, DEFAULT_MODEL_ID
from serve_app.runtime.serve_config import load_deploy_config

REPO = Path(__file__).resolve().parents[2]


def shipped_args() -> dict:
    return yaml.safe_load((REPO / "serve_config.yaml").read_text())["applications"][0]["args"]


def test_defaults_serve_the_bundled_model_under_its_id() -> None:
    config = AppConfig.from_args({}, {})
    assert config.model == DEFAULT_MODEL_ID
    assert config.served_name == DEFAULT_MODEL_ID
    assert config.tensor_parallel_size == 1
    assert config.accelerator == "auto"


def test_model_name_env_replaces_model_and_its_served_name() -> None:
    args = {"model": "a/b", "served_model_name": "b", "tokenizer": "a/b-tok"}
    config = AppConfig.from_args(args, {"MODEL_NAME": "meta-llama/Llama-3.1-8B-Instruct"})
    assert config.model == "meta-llama/Llama-3.1-8B-Instruct"
    assert config.served_name == "meta-llama/Llama-3.1-8B-Instruct"
    assert config.tokenizer is None


def test_served_model_name_and_tensor_parallel_env_overrides() -> None:
    env = {"SERVED_MODEL_NAME": "chat", "TENSOR_PARALLEL_SIZE": "4"}
    config = AppConfig.from_args({"tensor_parallel_size": 1}, env)
    assert config.served_name == "chat"
    assert config.tensor_parallel_size == 4


@pytest.mark.parametrize(
    "args",
    [
        {"tensor_parallel_size": 0},
        {"accelerator": "tpu"},
        {"no_such_key": 1},
        {"cpu_kvcache_gib": -1},
    ],
)
def test_invalid_args_are_rejected(args: dict) -> None:
    with pytest.raises(ValidationError):
        AppConfig.from_args(args, {})


def test_invalid_tensor_parallel_env_is_rejected() -> None:
    with pytest.raises(ValidationError):
        AppConfig.from_args({}, {"TENSOR_PARALLEL_SIZE": "two"})


def test_shipped_serve_config_args_are_valid() -> None:
    config = AppConfig.from_args(shipped_args(), {})
    assert config.model == DEFAULT_MODEL_ID


def test_shipped_serve_config_declares_llm_server_autoscaling() -> None:
    deploy = load_deploy_config(REPO / "serve_config.yaml", {})
    app = deploy.applications[0]
    assert app.import_path == "deployments.app:build_app"
    llm = next(d for d in app.deployments if d.name == "LLMServer")
    assert llm.autoscaling_config["min_replicas"] >= 1
    assert "target_ongoing_requests" in llm.autoscaling_config
    assert deploy.http_options.port == 8000


def test_shipped_serve_config_bounds_the_llm_server_queue_below_the_ingress_limit() -> None:
    app = load_deploy_config(REPO / "serve_config.yaml", {}).applications[0]
    deployments = {d.name: d for d in app.deployments}
    llm, ingress = deployments["LLMServer"], deployments["OpenAIIngress"]
    assert llm.max_queued_requests > 0  # -1 would queue without bound
    # A full queue answers with our OpenAI 503 before Serve's own limit on the ingress does.
    assert llm.max_queued_requests + llm.max_ongoing_requests < ingress.max_ongoing_requests


def test_port_env_overrides_http_port() -> None:
    deploy = load_deploy_config(REPO / "serve_config.yaml", {"PORT": "9123"})
    assert deploy.http_options.port == 9123


def test_metrics_buckets_must_increase() -> None:
    with pytest.raises(ValidationError):
        AppConfig.from_args({"metrics": {"ttft_buckets_s": [0.1, 0.1, 1.0]}}, {})


def test_metrics_defaults() -> None:
    metrics = AppConfig.from_args({}, {}).metrics
    assert metrics.engine_metrics is True
    assert metrics.export_port == 8080


def test_accelerator_and_fail_fast_env_overrides() -> None:
    env = {"ACCELERATOR": "gpu", "FAIL_FAST_ON_MISSING_GPUS": "false"}
    config = AppConfig.from_args({"accelerator": "auto"}, env)
    assert config.accelerator == "gpu"
    assert config.fail_fast_on_missing_gpus is False


def test_null_pacing_in_the_args_turns_pacing_off() -> None:
    config = AppConfig.from_args({"max_chunks_per_second": None, "max_model_len": None}, {})
    assert config.max_chunks_per_second is None
    assert AppConfig.from_args({}, {}).max_chunks_per_second == DEFAULT_MAX_CHUNKS_PER_SECOND
