"""README.md and docs/*.md stay true to the tree: every relative link (and its anchor) resolves,
every configuration key a key table names exists, and every metric named is defined by the
service or documented as vLLM's or Ray's in docs/observability.md.
"""

import ast
import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from ray.serve.schema import DeploymentSchema

from serve_app.core.config import AppConfig

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
OBSERVABILITY = DOCS / "observability.md"
METRICS_MODULE = REPO / "serve_app" / "observability" / "metrics.py"
FENCED = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (?P<title>.+)$", re.MULTILINE)
KEY_ROW = re.compile(r"^\| `(?P<key>[\w.]+)` \|", re.MULTILINE)
METRIC = re.compile(r"\bray_(?:llm|vllm|serve|node)_\w+(?![\w*])")  # `ray_node_gpu*`: a prefix
HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")
EXTERNAL_METRIC_SECTIONS = ("### Engine", "### Ray Serve and Ray")


def prose(page: Path) -> str:
    """A page without its fenced code blocks (commands and output, not links)."""
    return FENCED.sub("", page.read_text())


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, `-` for spaces."""
    slugs = set()
    for heading in HEADING.finditer(prose(page)):
        title = re.sub(r"[^\w\- ]", "", heading["title"].strip().lower())
        slugs.add(title.replace(" ", "-"))
    return slugs


def relative_links() -> list[tuple[Path, str]]:
    return [
        (page, m["target"])
        for page in PAGES
        for m in LINK.finditer(prose(page))
        if not re.match(r"[a-z]+:", m["target"])
    ]


@pytest.mark.parametrize("page, target", relative_links(), ids=lambda x: getattr(x, "name", x))
def test_every_relative_link_resolves(page: Path, target: str) -> None:
    path, _, anchor = target.partition("#")
    resolved = (page.parent / path).resolve() if path else page
    assert resolved.exists(), f"{page.name}: {target} does not exist"
    if anchor and resolved.suffix == ".md":
        assert anchor in anchors(resolved), f"{page.name}: no heading #{anchor} in {path}"


def key_tables(page: Path) -> list[tuple[str, list[str]]]:
    """(header, keys) of each table whose first column is `key`."""
    tables = []
    for block in re.split(r"\n(?!\|)", prose(page)):
        if block.lstrip("\n").startswith("| key |"):
            header = block.lstrip("\n").splitlines()[0]
            tables.append((header, KEY_ROW.findall(block)))
    return tables


def app_config_has(dotted: str) -> bool:
    """Whether `a.b` names a field of AppConfig (through its nested models)."""
    model: type[BaseModel] | None = AppConfig
    for name in dotted.split("."):
        if model is None or name not in model.model_fields:
            return False
        field = model.model_fields[name].annotation
        nested = isinstance(field, type) and issubclass(field, BaseModel)
        model = field if nested else None
    return True


def documented_keys() -> list[tuple[str, str, bool]]:
    """(page, key, is a Serve deployment key) for every key-table row of docs/."""
    return [
        (page.name, key, "| deployment |" in header)
        for page in sorted(DOCS.glob("*.md"))
        for header, keys in key_tables(page)
        for key in keys
    ]


def test_the_configuration_page_documents_keys() -> None:
    # Guards the scan: both of the configuration page's key tables are found.
    tables = key_tables(DOCS / "configuration.md")
    assert len(tables) == 2 and all(keys for _, keys in tables)


@pytest.mark.parametrize("page, key, deployment", documented_keys(), ids=lambda x: str(x))
def test_every_documented_config_key_exists(page: str, key: str, deployment: bool) -> None:
    if deployment:
        assert key in DeploymentSchema.model_fields, f"{page}: {key} is no Serve deployment key"
    else:
        assert app_config_has(key), f"{page}: {key} is not in AppConfig"


def test_every_shipped_app_arg_is_documented() -> None:
    shipped = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    args = shipped["applications"][0]["args"]
    documented = {key for _, key, deployment in documented_keys() if not deployment}
    assert set(args) - documented == set()


def defined_metrics() -> set[str]:
    """The Prometheus names of the metrics metrics.py creates (Ray adds `ray_`, counters
    `_total`)."""
    names = set()
    for node in ast.walk(ast.parse(METRICS_MODULE.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"Counter", "Gauge", "Histogram"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(f"ray_{node.args[0].value}{'_total' if node.func.id == 'Counter' else ''}")
    return names


def external_metrics() -> set[str]:
    """vLLM's and Ray's metrics, as docs/observability.md's sections on them name them."""
    names = set()
    for section in re.split(r"\n(?=### )", OBSERVABILITY.read_text()):
        if section.startswith(EXTERNAL_METRIC_SECTIONS):
            names |= set(METRIC.findall(section))
    return names


def named_metrics() -> list[tuple[str, str]]:
    return sorted(
        {
            (page.name, HISTOGRAM_SERIES.sub("", name))
            for page in PAGES
            for name in METRIC.findall(page.read_text())
        }
    )


@pytest.mark.parametrize("page, metric", named_metrics(), ids=lambda x: str(x))
def test_every_metric_named_is_defined_or_documented_as_vllms_or_rays(
    page: str, metric: str
) -> None:
    if metric.startswith("ray_llm_"):
        assert metric in defined_metrics(), f"{page}: {metric} is not in metrics.py"
    else:
        assert metric in external_metrics(), (
            f"{page}: {metric} is not among vLLM's or Ray's metrics in docs/observability.md"
        )
