"""A real Prometheus scraping the real app: every dashboard panel's query returns data.

Prometheus (server and promtool) comes from deploy/prometheus/install-prometheus.sh. Without
it these tests are skipped, unless REQUIRE_PROMETHEUS is set (CI sets it): then they fail.
The Prometheus servers run the shipped scrape configs, scraping faster and pointed at the
session's app.
"""

import json
import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import jsonschema
import pytest
import ray
import yaml
from ray._private import ray_constants

from serve_app.api.protocol import MetricsSummary
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "llm-serving.json"
DOCS = REPO / "docs" / "observability.md"
APP_SCRAPE_CONFIG = REPO / "deploy" / "prometheus" / "prometheus-app.yml"
RAY_SCRAPE_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
REQUIRE_ENV = "REQUIRE_PROMETHEUS"
APPLICATION = "llm"  # serve_config.yaml's application name
SCRAPE_INTERVAL_S = 3
RATE_INTERVAL = "30s"  # Grafana's $__rate_interval: several of Ray's ~10 s export intervals
START_TIMEOUT_S = 60
DATA_TIMEOUT_S = 240
GPU_ONLY = "GPU only"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# About 400 tokens, sent twice: the second time, vLLM finds its prefix in the prefix cache.
SHARED_PROMPT = "Here is a list of facts to remember. " + " ".join(
    f"Fact {i}: the number {i} is {'even' if i % 2 == 0 else 'odd'}." for i in range(32)
)


@dataclass(frozen=True)
class Prometheus:
    """A Prometheus server this module started, and its HTTP API."""

    url: str

    def api(self, path: str, **params: str | float) -> list[dict]:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", body
        return body["data"]["result"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)

    def query_range(self, expr: str, start: float) -> list[dict]:
        return self.api(
            "query_range", query=expr, start=start, end=time.time(), step=SCRAPE_INTERVAL_S
        )

    def wait_for(self, expr: str, timeout_s: float = START_TIMEOUT_S) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while not (result := self.query(expr)):
            assert time.monotonic() < deadline, f"no data for {expr} after {timeout_s}s"
            time.sleep(1)
        return result


def _fast(config: dict) -> dict:
    """A shipped config, scraping every SCRAPE_INTERVAL_S instead of every 10 s."""
    interval = f"{SCRAPE_INTERVAL_S}s"
    jobs = [{**job, "scrape_timeout": interval} for job in config["scrape_configs"]]
    return {
        **config,
        "global": {
            **config["global"],
            "scrape_interval": interval,
            "evaluation_interval": interval,
        },
        "scrape_configs": jobs,
    }


def _run_prometheus(binary: str, config: dict, folder: Path) -> Iterator[Prometheus]:
    """Run a Prometheus with `config` on a free port, storing into `folder`; stop it after."""
    config_path = folder / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = folder / "prometheus.log"
    port = free_port()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + START_TIMEOUT_S
            while not _ready(url):
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "Prometheus did not get ready"
                time.sleep(0.5)
            yield Prometheus(url)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def graph_panels() -> list[dict]:
    """The dashboard's panels that draw data (rows only group them)."""
    panels = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        panels.extend(panel.get("panels", []))
        if panel["type"] != "row":
            panels.append(panel)
    return panels


def is_gpu_only(panel: dict) -> bool:
    return panel["description"].startswith(GPU_ONLY)


def substitute(expr: str, model: str) -> str:
    """The query Grafana sends with this application and model selected."""
    return (
        expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$application", APPLICATION)
        .replace("$model", model)
    )


def has_finite_value(result: list[dict]) -> bool:
    return any(math.isfinite(float(value)) for series in result for _, value in series["values"])


def generate_load(http: httpx.Client, model: str) -> None:
    """Chat and completions, streamed or not, an error, a prefix-cache hit, an aborted stream."""
    chat = {"model": model, "messages": QUESTION, "max_tokens": 8, "temperature": 0}
    completion = {"model": model, "prompt": "The capital of France is", "max_tokens": 8}
    for stream in (False, True):
        assert http.post("/v1/chat/completions", json={**chat, "stream": stream}).status_code == 200
        assert (
            http.post("/v1/completions", json={**completion, "stream": stream}).status_code == 200
        )
    assert http.post("/v1/chat/completions", json={**chat, "model": "nope"}).status_code == 404
    shared = {"model": model, "prompt": SHARED_PROMPT, "max_tokens": 4}
    for _ in range(2):
        assert http.post("/v1/completions", json=shared).status_code == 200
    abandoned = {"model": model, "prompt": "Once upon a time", "max_tokens": 500, "stream": True}
    with http.stream("POST", "/v1/completions", json=abandoned) as response:
        next(response.iter_lines())


@pytest.fixture(scope="module")
def binaries() -> tuple[str, str]:
    """The paths of prometheus and promtool."""
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus and promtool:
        return prometheus, promtool
    message = "prometheus/promtool not on PATH: run deploy/prometheus/install-prometheus.sh"
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{message} ({REQUIRE_ENV} is set)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def prometheus(
    binaries: tuple[str, str], base_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """The shipped one-node config (prometheus-app.yml), its target the session's app."""
    config = _fast(yaml.safe_load(APP_SCRAPE_CONFIG.read_text()))
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [urlsplit(base_url).netloc]}]
    yield from _run_prometheus(binaries[0], config, tmp_path_factory.mktemp("prometheus-app"))


@pytest.fixture(scope="module")
def cluster_prometheus(
    binaries: tuple[str, str], base_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """The shipped Ray-cluster config (prometheus.yml), reading a discovery file written as
    Ray's head writes it: every live node's metrics export address, label job="ray"."""
    folder = tmp_path_factory.mktemp("prometheus-ray")
    nodes = [node for node in ray.nodes() if node["Alive"]]
    targets = [f"{node['NodeManagerAddress']}:{node['MetricsExportPort']}" for node in nodes]
    discovery = folder / ray_constants.PROMETHEUS_SERVICE_DISCOVERY_FILE
    discovery.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": targets}]))
    config = _fast(yaml.safe_load(RAY_SCRAPE_CONFIG.read_text()))
    (job,) = config["scrape_configs"]
    job["file_sd_configs"] = [{"files": [str(discovery)], "refresh_interval": "5s"}]
    yield from _run_prometheus(binaries[0], config, folder)


@pytest.fixture(scope="module")
def loaded(prometheus: Prometheus, http: httpx.Client, model: str) -> float:
    """Load the app twice, so that Prometheus sees every counter and histogram both before
    and after it grows, then wait until each panel query (GPU-only ones aside) has data.
    Returns the start of the range every query covers."""
    start = time.time() - 10
    generate_load(http, model)
    prometheus.wait_for("ray_llm_requests_aborted_total", DATA_TIMEOUT_S)
    generate_load(http, model)
    pending = [
        substitute(target["expr"], model)
        for panel in graph_panels()
        if not is_gpu_only(panel)
        for target in panel["targets"]
    ]
    deadline = time.monotonic() + DATA_TIMEOUT_S
    while pending and time.monotonic() < deadline:
        time.sleep(SCRAPE_INTERVAL_S)
        pending = [e for e in pending if not has_finite_value(prometheus.query_range(e, start))]
    return start


def test_prometheus_scrapes_the_app_metrics_endpoint(prometheus: Prometheus) -> None:
    up = prometheus.wait_for('max_over_time(up{job="llm-serving"}[1m]) == 1')
    assert len(up) == 1


@pytest.mark.parametrize("panel", graph_panels(), ids=lambda panel: panel["title"])
def test_dashboard_panel_shows_data(
    panel: dict, prometheus: Prometheus, loaded: float, model: str
) -> None:
    if is_gpu_only(panel) and not prometheus.query("ray_node_gpus_available"):
        pytest.skip("GPU-only panel, and this scrape has no GPU (no ray_node_gpus_available)")
    for target in panel["targets"]:
        expr = substitute(target["expr"], model)
        result = prometheus.query_range(expr, loaded)
        assert has_finite_value(result), f"{panel['title']} / {target['legendFormat']}: {expr}"


def test_prefix_cache_hits_reach_prometheus(
    prometheus: Prometheus, loaded: float, model: str
) -> None:
    hits = prometheus.query(f'sum(ray_vllm_prefix_cache_hits_total{{model_name="{model}"}})')
    assert hits and float(hits[0]["value"][1]) > 0


@pytest.mark.parametrize("config", [APP_SCRAPE_CONFIG, RAY_SCRAPE_CONFIG], ids=lambda p: p.name)
def test_shipped_scrape_config_passes_promtool(config: Path, binaries: tuple[str, str]) -> None:
    check = subprocess.run(
        [binaries[1], "check", "config", str(config)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_ray_scrape_config_reads_rays_service_discovery_file() -> None:
    (job,) = yaml.safe_load(RAY_SCRAPE_CONFIG.read_text())["scrape_configs"]
    (files,) = job["file_sd_configs"]
    # /tmp/ray is Ray's temp dir unless `ray start --temp-dir` (or RAY_TMPDIR) moves it.
    assert files["files"] == [f"/tmp/ray/{ray_constants.PROMETHEUS_SERVICE_DISCOVERY_FILE}"]


def test_ray_scrape_config_scrapes_every_node_agent(
    cluster_prometheus: Prometheus, loaded: float
) -> None:
    requests = cluster_prometheus.wait_for("ray_llm_requests_total")
    assert {series["metric"]["job"] for series in requests} == {"ray"}
    up = cluster_prometheus.wait_for('max_over_time(up{job="ray"}[1m])')
    assert up and all(series["value"][1] == "1" for series in up)


def documented_summary_fields() -> tuple[set[str], set[str]]:
    """The JSON summary's fields and its totals' keys, as docs/observability.md lists them."""
    section = DOCS.read_text().split("## GET /metrics in JSON")[1].split("\n## ")[0]
    fields, totals = section.split("`totals` (", 1)

    def names(text: str) -> set[str]:
        return set(re.findall(r"`([a-z_]+)`", text)) - {"null"}

    return names(fields) | {"totals"}, names(totals.split(")", 1)[0])


def test_json_metrics_match_the_documented_fields(http: httpx.Client) -> None:
    response = http.get("/metrics", headers={"Accept": "application/json"})
    assert response.status_code == 200
    body = response.json()
    fields, totals = documented_summary_fields()
    assert set(body) == fields
    assert set(body["totals"]) == totals
    jsonschema.validate(body, MetricsSummary.model_json_schema())  # and the documented types
