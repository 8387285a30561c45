"""Render the Grafana dashboard's panels from a running Prometheus into one PNG (for docs).

Every panel of deploy/grafana/dashboards/llm-serving.json is queried over a time range
(query_range, the dashboard's variables substituted as Grafana would) and drawn with
matplotlib in a grid, in the dashboard's order:

    python deploy/grafana/render_panels.py --prometheus http://localhost:9090 \
        --minutes 15 --var model=HuggingFaceTB/SmolLM2-135M-Instruct --output docs/dashboard.png
"""

import argparse
import json
import math
import re
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

import matplotlib.dates as mdates
import matplotlib.pyplot as plt

DASHBOARD = Path(__file__).resolve().parent / "dashboards" / "llm-serving.json"
COLUMNS = 3
MAX_POINTS = 300
GPU_ONLY = "GPU only"
# How each Grafana unit of the dashboard is drawn: axis label and scale factor.
UNITS = {
    "s": ("seconds", 1.0),
    "reqps": ("requests/s", 1.0),
    "short": ("", 1.0),
    "percentunit": ("%", 100.0),
    "percent": ("%", 1.0),
    "bytes": ("GiB", 1 / 2**30),
}
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def graph_panels(dashboard: dict) -> list[dict]:
    """The panels that draw data, in order (rows only group them)."""
    panels = []
    for panel in dashboard["panels"]:
        panels.extend(panel.get("panels", []))
        if panel["type"] != "row":
            panels.append(panel)
    return panels


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace $name and ${name}, longest names first ($__rate_interval before $model)."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", variables[name]).replace(f"${name}", variables[name])
    return expr


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=60) as r:
        body = json.load(r)
    if body["status"] != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def legend(template: str, labels: dict[str, str]) -> str:
    return LEGEND_LABEL.sub(lambda m: labels.get(m.group(1), ""), template).strip() or "value"


def on_grid(values: list[list], start: float, step: float, count: int) -> list[float]:
    """A series' points at every step of the range; NaN where it has none (a gap)."""
    by_step = {round((float(t) - start) / step): float(v) for t, v in values}
    return [by_step.get(i, math.nan) for i in range(count)]


def draw_panel(
    axes: plt.Axes, panel: dict, times: list[datetime], series: list[tuple[str, list[float]]]
) -> None:
    unit, scale = UNITS.get(panel["fieldConfig"]["defaults"].get("unit", "short"), ("", 1.0))
    axes.set_title(panel["title"], fontsize=9, loc="left")
    axes.tick_params(labelsize=7)
    axes.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    axes.set_ylabel(unit, fontsize=7)
    axes.set_xlim(times[0], times[-1])
    if not series:
        gpu_only = panel["description"].startswith(GPU_ONLY)
        message = "GPU only: no data on this machine" if gpu_only else "no data"
        axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes)
        return
    for label, values in series:
        axes.plot(times, [v * scale for v in values], linewidth=1, label=label)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=6, loc="upper left", framealpha=0.6)


def render(
    prometheus: str, variables: dict[str, str], start: float, end: float, output: Path
) -> None:
    panels = graph_panels(json.loads(DASHBOARD.read_text()))
    step = max(2.0, (end - start) / MAX_POINTS)
    rows = math.ceil(len(panels) / COLUMNS)
    figure, grid = plt.subplots(rows, COLUMNS, figsize=(15, 2.9 * rows), squeeze=False)
    times = [
        datetime.fromtimestamp(start + i * step) for i in range(int((end - start) // step) + 1)
    ]
    for axes, panel in zip(grid.flat, panels, strict=False):
        series = []
        for target in panel["targets"]:
            expr = substitute(target["expr"], variables)
            for result in query_range(prometheus, expr, start, end, step):
                values = on_grid(result["values"], start, step, len(times))
                if any(math.isfinite(v) for v in values):
                    series.append((legend(target["legendFormat"], result["metric"]), values))
        draw_panel(axes, panel, times, series)
    for axes in list(grid.flat)[len(panels) :]:
        axes.axis("off")
    span = f"{datetime.fromtimestamp(start):%Y-%m-%d %H:%M} to {datetime.fromtimestamp(end):%H:%M}"
    figure.suptitle(f"LLM serving dashboard, {span}", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.98))
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=72)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://localhost:9090")
    parser.add_argument("--minutes", type=float, default=15.0, help="range ending now")
    parser.add_argument("--start", type=float, help="range start (Unix seconds)")
    parser.add_argument("--end", type=float, help="range end (Unix seconds; default now)")
    parser.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="dashboard variable (application, model; default .*, all)",
    )
    parser.add_argument(
        "--rate-interval", default="40s", help="$__rate_interval (Grafana: 4 scrape intervals)"
    )
    parser.add_argument("--output", type=Path, default=Path("docs/dashboard.png"))
    args = parser.parse_args()
    variables = {"application": ".*", "model": ".*", "__rate_interval": args.rate_interval}
    variables |= dict(item.split("=", 1) for item in args.var)
    end = args.end or time.time()
    start = args.start or end - args.minutes * 60
    render(args.prometheus.rstrip("/"), variables, start, end, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
