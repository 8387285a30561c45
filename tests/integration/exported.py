"""Reading the app's exported metrics (GET /metrics, Prometheus text) in integration tests:
Ray exports them every ~10 s, so a count is read as its growth since a scrape taken before,
once it has been exported."""

import re
import time

import httpx

EXPORT_WAIT_S = 60
EXPORT_INTERVAL_S = 12  # over one of Ray's metric exports
# What a generation request raises (requests_total also counts the scrapes themselves).
COUNTERS = (
    "ray_llm_prompt_tokens_total",
    "ray_llm_request_errors_total",
    "ray_llm_requests_aborted_total",
    "ray_llm_engine_cancellations_total",
)


def scrape(http: httpx.Client) -> str:
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def series(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(rf"{re.escape(name)}[{{ ]", line)]


def total(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s series that carry these label values."""
    wanted = [f'{label}="{value}"' for label, value in labels.items()]
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in series(text, name)
        if all(label in line for label in wanted)
    )


def settled_scrape(http: httpx.Client) -> str:
    """A scrape once the request counters stopped growing (Ray exports every ~10 s, so
    requests of earlier modules may still be on their way)."""
    last = scrape(http)
    deadline = time.monotonic() + EXPORT_WAIT_S
    while time.monotonic() < deadline:
        time.sleep(EXPORT_INTERVAL_S)
        text = scrape(http)
        if all(total(text, name) == total(last, name) for name in COUNTERS):
            return text
        last = text
    raise AssertionError(f"the counters still grew after {EXPORT_WAIT_S}s without requests")


def grown(http: httpx.Client, before: str, name: str, at_least: float, **labels: str) -> float:
    """How much `name`'s series with these labels grew since `before`, scraping until it grew
    by `at_least` or EXPORT_WAIT_S passed."""
    deadline = time.monotonic() + EXPORT_WAIT_S
    while (delta := total(scrape(http), name, **labels) - total(before, name, **labels)) < at_least:
        if time.monotonic() > deadline:
            break
        time.sleep(2)
    return delta
