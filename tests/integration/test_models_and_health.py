"""GET /v1/models and GET /health."""

import httpx
import openai
import ray

from serve_app.core.constants import INGRESS_DEPLOYMENT, INGRESS_REPLICAS


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


def test_tokenize_counts_the_prompt(http: httpx.Client, model: str) -> None:
    body = {"model": model, "prompt": "The capital of France is", "add_special_tokens": False}
    data = http.post("/tokenize", json=body).json()
    assert data["count"] == len(data["tokens"]) == 5
    assert data["max_model_len"] > 0


def test_tokenize_applies_the_chat_template(http: httpx.Client, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    tokens = http.post("/tokenize", json=body).json()["tokens"]
    text = http.post("/detokenize", json={"model": model, "tokens": tokens}).json()["prompt"]
    assert "<|im_start|>user\nhi<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_detokenize_inverts_tokenize(http: httpx.Client, model: str) -> None:
    prompt = "Ray Serve runs vLLM."
    body = {"model": model, "prompt": prompt, "add_special_tokens": False}
    tokens = http.post("/tokenize", json=body).json()["tokens"]
    assert http.post("/detokenize", json={"model": model, "tokens": tokens}).json() == {
        "prompt": prompt
    }


def test_tokenize_without_an_input_is_an_openai_400(http: httpx.Client, model: str) -> None:
    response = http.post("/tokenize", json={"model": model})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_one_model_is_retrieved_by_id_and_an_unknown_one_is_404(
    client: openai.OpenAI, http: httpx.Client, model: str
) -> None:
    card = client.models.retrieve(model)
    assert (card.id, card.object) == (model, "model")
    assert card.model_dump()["max_model_len"] > 0
    error = http.get("/v1/models/no-such-model").json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error", "model_not_found", "model",
    )  # fmt: skip


def test_the_builder_runs_two_ingress_replicas_on_the_cpu_path(http: httpx.Client) -> None:
    """serve_config.yaml leaves the ingress count to the builder: 2 on CPU (4 on a GPU)."""
    ingress = [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if f"#{INGRESS_DEPLOYMENT}#" in actor["name"]
    ]
    assert len(ingress) == INGRESS_REPLICAS["cpu"] == 2
