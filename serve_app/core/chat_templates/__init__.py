"""Chat templates bundled with the service, chosen by name in serve_config.yaml's
`chat_template` (e.g. `chatml_tools`: ChatML with tools, for the `hermes` tool parser)."""

from pathlib import Path

BUNDLED = Path(__file__).parent


def resolve_chat_template(value: str | None) -> str | None:
    """A bundled template's file for its name, else `value` as given (a path or a template)."""
    if value is not None and (bundled := BUNDLED / f"{value}.jinja").is_file():
        return str(bundled)
    return value
