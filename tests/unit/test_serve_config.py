"""Serve config files: one way to derive a changed copy (benchmarks, tests, live updates)."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from serve_app.core.constants import INGRESS_DEPLOYMENT, LLM_SERVER_DEPLOYMENT
from serve_app.runtime.serve_config import (
    deployment_section,
    derive,
    load_deploy_config,
    to_dict,
    write,
)

REPO = Path(__file__).resolve().parents[2]


def shipped():
    return load_deploy_config(REPO / "serve_config.yaml", {"PORT": "8123"})


def test_derive_merges_app_args_and_deployment_options_into_a_copy() -> None:
    original = shipped()
    before = to_dict(original)
    derived = derive(
        original,
        {"max_chunks_per_second": None, "warmup": False},
        {
            LLM_SERVER_DEPLOYMENT: {
                "autoscaling_config": {"max_replicas": 3},
                "user_config": {"max_chunks_per_second": 5},
            },
            INGRESS_DEPLOYMENT: {"num_replicas": 4},
        },
    )
    assert to_dict(original) == before
    raw = to_dict(derived)
    args = raw["applications"][0]["args"]
    assert args["max_chunks_per_second"] is None and args["warmup"] is False
    assert args["model"] == before["applications"][0]["args"]["model"]
    llm = deployment_section(raw, LLM_SERVER_DEPLOYMENT)
    shipped_llm = deployment_section(before, LLM_SERVER_DEPLOYMENT)
    assert llm["autoscaling_config"] == shipped_llm["autoscaling_config"] | {"max_replicas": 3}
    assert llm["user_config"] == {"max_chunks_per_second": 5}
    assert deployment_section(raw, INGRESS_DEPLOYMENT)["num_replicas"] == 4
    assert raw["http_options"]["port"] == 8123


def test_derive_refuses_an_app_arg_the_app_does_not_know() -> None:
    with pytest.raises(ValidationError, match="max_chunks_per_secnd"):
        derive(shipped(), {"max_chunks_per_secnd": 5})


def test_derive_adds_a_section_for_a_deployment_the_file_does_not_tune() -> None:
    raw = to_dict(derive(shipped(), deployments={"Extra": {"num_replicas": 2}}))
    assert deployment_section(raw, "Extra") == {"name": "Extra", "num_replicas": 2}


def test_a_written_config_reads_back_the_same(tmp_path: Path) -> None:
    derived = derive(shipped(), {"warmup": False})
    path = write(derived, tmp_path / "serve_config.yaml")
    assert to_dict(load_deploy_config(path, {})) == to_dict(derived)
