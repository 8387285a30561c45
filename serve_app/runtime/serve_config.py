"""Serve config files (serve_config.yaml): read, validated, and derived with changes.

`derive` is the one way to change a config for a run (benchmarks, tests, live updates): it
returns a validated copy, the original left as it was, and checks app args against
`AppConfig` so that a typo fails here, not in Serve.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.core.config import AppConfig
from serve_app.core.constants import ENV_PORT


def load_deploy_config(path: Path, env: Mapping[str, str]) -> ServeDeploySchema:
    """Read serve_config.yaml; PORT overrides http_options.port."""
    return parse_deploy_config(yaml.safe_load(path.read_text()), env)


def parse_deploy_config(raw: Mapping[str, Any], env: Mapping[str, str]) -> ServeDeploySchema:
    """Validate a Serve config; PORT overrides http_options.port."""
    raw = dict(raw)
    if port := env.get(ENV_PORT):
        raw["http_options"] = {**raw.get("http_options", {}), "port": int(port)}
    return ServeDeploySchema.model_validate(raw)


def derive(
    config: ServeDeploySchema,
    app_args: Mapping[str, Any] | None = None,
    deployments: Mapping[str, Mapping[str, Any]] | None = None,
) -> ServeDeploySchema:
    """A copy of `config` whose first application has `app_args` merged into its args and
    each named deployment's options updated (a nested dict, such as `autoscaling_config` or
    `ray_actor_options`, merged one level deep)."""
    raw = to_dict(config)
    app = raw["applications"][0]
    app["args"] = {**app.get("args", {}), **(app_args or {})}
    AppConfig.model_validate(app["args"])
    for name, options in (deployments or {}).items():
        section = deployment_section(raw, name)
        for key, value in options.items():
            held = section.get(key)
            if isinstance(held, dict) and isinstance(value, Mapping):
                section[key] = {**held, **value}
            else:
                section[key] = value
    return ServeDeploySchema.model_validate(raw)


def deployment_section(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The named deployment's section of the first application (added if the file has none)."""
    sections: list[dict[str, Any]] = raw["applications"][0].setdefault("deployments", [])
    for section in sections:
        if section["name"] == name:
            return section
    sections.append({"name": name})
    return sections[-1]


def to_dict(config: ServeDeploySchema) -> dict[str, Any]:
    """The config as it would be written in serve_config.yaml (only what is set)."""
    return config.model_dump(mode="json", exclude_unset=True)


def write(config: ServeDeploySchema, path: Path) -> Path:
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    return path


def metrics_export_port(config: ServeDeploySchema) -> int:
    """The metrics export port the first application asks Ray to use."""
    return AppConfig.from_args(config.applications[0].args, {}).metrics.export_port
