"""The command line: its console script and the environment `--help` lists."""

import tomllib
from pathlib import Path

import pytest

from serve_app import __main__ as cli
from serve_app.core import constants

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_every_environment_variable_the_service_reads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    names = [value for key, value in vars(constants).items() if key.startswith("ENV_")]
    assert names and all(f"  {name} " in shown for name in names), shown


def test_the_console_script_runs_the_cli() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"vllm-ray-serve": "serve_app.__main__:main"}
