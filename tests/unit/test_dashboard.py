"""The Grafana dashboard's structure, and that every metric it and the code use is documented."""

import ast
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "llm-serving.json"
DOCS = REPO / "docs" / "observability.md"
GPU_ONLY = "GPU only"
TEMPLATE_VARIABLES = {"datasource", "application", "model"}
METRIC_NAME = re.compile(r"\b(ray_[a-zA-Z0-9_]+)\b")
HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")
DOCUMENTED_ROW = re.compile(r"^\|\s*`(ray_[a-zA-Z0-9_]+)`\s*\|")


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def graph_panels() -> list[dict]:
    """Every panel that draws data (rows only group them), rows' nested panels included."""
    panels = []
    for panel in dashboard()["panels"]:
        panels.extend(panel.get("panels", []))
        if panel["type"] != "row":
            panels.append(panel)
    return panels


def documented_metrics() -> set[str]:
    """The names in the metric tables of docs/observability.md, as Prometheus shows them."""
    return {
        m.group(1) for line in DOCS.read_text().splitlines() if (m := DOCUMENTED_ROW.match(line))
    }


def dashboard_metrics() -> set[str]:
    names = set()
    for panel in graph_panels():
        for target in panel["targets"]:
            names |= set(METRIC_NAME.findall(target["expr"]))
    for variable in dashboard()["templating"]["list"]:
        names |= set(METRIC_NAME.findall(variable.get("definition", "")))
    return names


METRICS_MODULE = REPO / "serve_app" / "observability" / "metrics.py"


def serve_metric_definitions() -> dict[str, Path]:
    """The Prometheus name of every `ray.serve.metrics` metric the service creates (Ray adds
    `ray_`, counters also `_total`), and the module that creates it."""
    kinds = {"Counter", "Gauge", "Histogram"}
    found = {}
    sources = [*(REPO / "serve_app").rglob("*.py"), *(REPO / "deployments").rglob("*.py")]
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in kinds
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                suffix = "_total" if node.func.id == "Counter" else ""
                found[f"ray_{node.args[0].value}{suffix}"] = source
    return found


def defined_serve_metrics() -> set[str]:
    return set(serve_metric_definitions())


def test_every_metric_is_defined_in_the_metrics_module() -> None:
    places = serve_metric_definitions()
    assert "ray_llm_engine_cancellations_total" in places
    assert {name: path for name, path in places.items() if path != METRICS_MODULE} == {}


def test_dashboard_has_a_fixed_uid_and_its_template_variables() -> None:
    board = dashboard()
    assert board["uid"] == "llm-serving"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == TEMPLATE_VARIABLES
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("application", "model"):
        assert variables[name]["datasource"]["uid"] == "${datasource}"
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"


def test_panel_ids_are_unique() -> None:
    ids = [p["id"] for p in dashboard()["panels"]] + [
        p["id"] for row in dashboard()["panels"] for p in row.get("panels", [])
    ]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("panel", graph_panels(), ids=lambda p: p["title"])
def test_panel_queries_the_datasource_variable(panel: dict) -> None:
    assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert panel["targets"], "a panel without a query"
    for target in panel["targets"]:
        assert target["expr"].strip()
        assert target["datasource"] == panel["datasource"]
    assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    assert panel.get("description"), "every panel says what it shows"


# The label filters every series of a prefix must carry: the Serve layer's and Ray Serve's by
# application (ours also by model), vLLM's by model_name; node metrics are the node's own.
FILTERS = {
    "ray_llm_": ('application=~"$application"', 'model=~"$model"'),
    "ray_serve_": ('application=~"$application"',),
    "ray_vllm_": ('model_name=~"$model"',),
    "ray_node_": (),
}
SELECTOR = re.compile(r"\b(ray_[a-zA-Z0-9_]+)(\{[^}]*\})?")
GAUGES = {
    "ray_llm_requests_in_flight",
    "ray_vllm_num_requests_running",
    "ray_vllm_num_requests_waiting",
    "ray_vllm_kv_cache_usage_perc",
    "ray_serve_deployment_replica_healthy",
    "ray_serve_autoscaling_target_replicas",
    "ray_node_gram_used",
    "ray_node_gram_available",
    "ray_node_gpus_utilization",
}


def selectors(panel: dict) -> list[tuple[str, str, str]]:
    """(metric, its label matchers, the query before it) for every series a panel reads."""
    found = [
        (use.group(1), use.group(2) or "", target["expr"][: use.start()])
        for target in panel["targets"]
        for use in SELECTOR.finditer(target["expr"])
    ]
    assert found, "a panel that reads no series"
    return found


@pytest.mark.parametrize("panel", graph_panels(), ids=lambda p: p["title"])
def test_panel_filters_by_the_template_variables(panel: dict) -> None:
    """Every series a panel reads carries its prefix's filters (a prefix not listed fails)."""
    for metric, matchers, _ in selectors(panel):
        prefixes = [prefix for prefix in FILTERS if metric.startswith(prefix)]
        assert len(prefixes) == 1, f"{metric}: no filters listed for its prefix"
        for wanted in FILTERS[prefixes[0]]:
            assert wanted in matchers, f"{metric} without {wanted}"


@pytest.mark.parametrize("panel", graph_panels(), ids=lambda p: p["title"])
def test_series_are_read_over_a_range(panel: dict) -> None:
    """Counters and histograms through rate(), gauges through max_over_time(): Ray stops
    exporting a gauge one interval after its last update, so an instant read of vLLM's gauges
    blanks the panel whenever the engine idles."""
    for metric, _, before in selectors(panel):
        reader = "max_over_time(" if metric in GAUGES else "rate("
        if metric not in GAUGES:
            assert re.search(r"_(total|bucket)$", metric), f"{metric}: not a known gauge"
        assert before.rstrip().endswith(reader), f"{metric} not read through {reader}"


def test_gpu_only_panels_are_marked_and_read_only_gpu_metrics() -> None:
    """The live-scrape test skips the panels marked "GPU only" on machines without a GPU."""
    for panel in graph_panels():
        exprs = " ".join(t["expr"] for t in panel["targets"])
        uses_gpu = bool(re.search(r"ray_node_(gram|gpu)", exprs))
        assert panel["description"].startswith(GPU_ONLY) == uses_gpu, panel["title"]


def test_every_dashboard_metric_is_documented() -> None:
    documented = documented_metrics()
    undocumented = {
        name
        for name in dashboard_metrics()
        if name not in documented and HISTOGRAM_SERIES.sub("", name) not in documented
    }
    assert not undocumented, f"not in docs/observability.md: {sorted(undocumented)}"


def test_every_serve_layer_metric_the_code_defines_is_documented() -> None:
    defined = defined_serve_metrics()
    assert "ray_llm_requests_total" in defined and "ray_llm_queue_wait_seconds" in defined
    assert defined <= documented_metrics(), sorted(defined - documented_metrics())
