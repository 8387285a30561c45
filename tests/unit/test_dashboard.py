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


@pytest.mark.parametrize("panel", graph_panels(), ids=lambda p: p["title"])
def test_panel_filters_by_the_template_variables(panel: dict) -> None:
    """Serve-layer series filter on application and model, vLLM's on model_name."""
    for target in panel["targets"]:
        expr = target["expr"]
        if "ray_llm_" in expr:
            assert 'application=~"$application"' in expr and 'model=~"$model"' in expr
        if "ray_vllm_" in expr:
            assert 'model_name=~"$model"' in expr


@pytest.mark.parametrize("panel", graph_panels(), ids=lambda p: p["title"])
def test_gauges_are_read_over_a_range(panel: dict) -> None:
    """Ray stops exporting a gauge one interval after its last update: an instant read of
    vLLM's gauges blanks the panel whenever the engine idles."""
    gauges = (
        "ray_llm_requests_in_flight",
        "ray_vllm_num_requests_running",
        "ray_vllm_num_requests_waiting",
        "ray_vllm_kv_cache_usage_perc",
        "ray_serve_deployment_replica_healthy",
        "ray_serve_autoscaling_target_replicas",
        "ray_node_gram_used",
        "ray_node_gram_available",
        "ray_node_gpus_utilization",
    )
    for target in panel["targets"]:
        for gauge in gauges:
            for use in re.finditer(rf"{gauge}\b", target["expr"]):
                before = target["expr"][: use.start()]
                assert before.rstrip().endswith("max_over_time("), f"{gauge} read at an instant"


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
