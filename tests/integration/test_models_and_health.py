"""GET /v1/models and GET /health."""

import httpx
import openai


def test_models_lists_the_served_model(client: openai.OpenAI, model: str) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [model]
    assert models.data[0].object == "model"


def test_models_reports_the_context_length(http: httpx.Client) -> None:
    card = http.get("/v1/models").json()["data"][0]
    assert card["max_model_len"] > 0
    assert card["owned_by"]


def test_health_reports_model_and_tensor_parallel_size(http: httpx.Client, model: str) -> None:
    response = http.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "healthy",
        "model": model,
        "tensor_parallel_size": 1,
        "healthy_replicas": 1,
    }
