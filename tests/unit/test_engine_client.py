"""How the ingress reports failures of the hop to the LLM replicas (`EngineClient`)."""

import grpc
import pytest

from deployments.engine_client import _openai_errors
from deployments.errors import OpenAIError


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED]
)
def test_a_grpc_failure_of_the_hop_is_a_503_that_names_its_code(code: grpc.StatusCode) -> None:
    failure = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "boom")
    with pytest.raises(OpenAIError) as raised, _openai_errors():
        raise failure
    assert raised.value.status_code == 503
    assert raised.value.type == "service_unavailable_error"
    assert code.name in raised.value.message
