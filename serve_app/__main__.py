"""Command line: `vllm-ray-serve` (or `python -m serve_app`) `prepare-model | serve [CONFIG]`."""

import argparse
import logging
import sys
from pathlib import Path

from serve_app.core.constants import (
    ENV_ACCELERATOR,
    ENV_API_KEYS,
    ENV_FAIL_FAST_ON_MISSING_GPUS,
    ENV_MODEL_NAME,
    ENV_PORT,
    ENV_SERVED_MODEL_NAME,
    ENV_TENSOR_PARALLEL_SIZE,
)

# What `--help` lists: the environment variables `serve` reads over serve_config.yaml.
ENVIRONMENT: dict[str, str] = {
    ENV_MODEL_NAME: "model to serve, a Hugging Face id or a path (the config's `model`)",
    ENV_SERVED_MODEL_NAME: "the name clients pass as `model` (default: the model's)",
    ENV_TENSOR_PARALLEL_SIZE: "GPUs per LLM replica",
    ENV_ACCELERATOR: "auto, cpu or gpu (auto: GPU when the Ray cluster has one)",
    ENV_FAIL_FAST_ON_MISSING_GPUS: "false: deploy even when no node has the GPUs yet",
    ENV_PORT: "HTTP port (default 8000)",
    ENV_API_KEYS: "comma-separated API keys, each `key` or `name:key`; unset: no auth",
}


def environment_help() -> str:
    width = max(map(len, ENVIRONMENT))
    lines = (f"  {name:<{width}}  {meaning}" for name, meaning in ENVIRONMENT.items())
    return "environment variables (override serve_config.yaml):\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vllm-ray-serve",
        description=__doc__,
        epilog=environment_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "prepare-model", help="convert the bundled default model now (idempotent); print its path"
    )
    serve_cmd = commands.add_parser("serve", help="deploy serve_config.yaml and block")
    serve_cmd.add_argument("config", nargs="?", default="serve_config.yaml", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    if args.command == "prepare-model":
        from serve_app.core.default_model import prepare_default_model

        print(prepare_default_model())
        return 0
    from serve_app.runtime.runner import run

    return run(args.config)


if __name__ == "__main__":
    sys.exit(main())
