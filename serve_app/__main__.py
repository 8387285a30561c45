"""Command line: `python -m serve_app prepare-model | serve [CONFIG]`."""

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app", description=__doc__)
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
