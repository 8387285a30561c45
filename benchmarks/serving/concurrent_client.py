"""The guide's Test 4: N concurrent chat requests against the running service, timed.

Sends N different chat requests at once (asyncio + aiohttp) to any OpenAI-compatible base
URL serving this project (`python -m serve_app serve`), prints each request's time and the
`vllm_stats.tokens_per_second` its response carries, then the summary. The service batches
the requests together in its engine, so N answers take far less than N times one.

    python -m benchmarks.serving.concurrent_client [--base-url http://localhost:8000] [--n 5]
        [--model M] [--api-key KEY] [--out benchmarks/results/cpu]

`--model` defaults to the first id of GET /v1/models; `--out` also writes
`concurrent_client.json` and `concurrent_client.png`.
"""

import argparse
import asyncio
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import BaseModel, Field

from benchmarks.lib.report import Provenance, figure, provenance

MODULE = "benchmarks.serving.concurrent_client"

QUESTIONS = (
    "What is the capital of France?",
    "Explain what a GPU is in two sentences.",
    "Write a haiku about the sea.",
    "List three uses of Python.",
    "Why is the sky blue?",
    "Give one tip for writing clear code.",
    "What does an operating system do?",
    "Name three planets of the solar system.",
)
TIMEOUT_S = 600


class RequestResult(BaseModel):
    index: int
    question: str
    status: int
    seconds: float = Field(description="Client-measured, request sent to response read.")
    completion_tokens: int = 0
    tokens_per_second: float | None = Field(None, description="The response's vllm_stats.")
    time_to_first_token_s: float | None = None
    answer: str = ""
    error: str | None = None


class Summary(BaseModel):
    """Latencies and rates of the requests that succeeded; the others counted by status."""

    requests: int
    succeeded: int
    failed_by_status: dict[str, int] = Field(description="HTTP status -> failed requests.")
    wall_s: float
    completion_tokens: int
    aggregate_tokens_per_second: float = Field(description="All completion tokens / wall time.")
    mean_request_s: float | None
    max_request_s: float | None
    mean_tokens_per_second: float | None = Field(description="Mean of the responses' vllm_stats.")


class ConcurrentClientResult(Provenance):
    base_url: str
    model: str
    max_tokens: int
    temperature: float
    results: list[RequestResult]
    summary: Summary


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def first_model(session: aiohttp.ClientSession, base_url: str) -> str:
    async with session.get(f"{base_url}/v1/models") as response:
        response.raise_for_status()
        return (await response.json())["data"][0]["id"]


async def ask(
    session: aiohttp.ClientSession,
    base_url: str,
    index: int,
    question: str,
    model: str,
    max_tokens: int,
    temperature: float,
) -> RequestResult:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": temperature,
    }
    start = time.perf_counter()
    async with session.post(f"{base_url}/v1/chat/completions", json=body) as response:
        payload = await response.json()
    seconds = round(time.perf_counter() - start, 3)
    if response.status != 200:
        error = payload.get("error", {}).get("message", str(payload))
        return RequestResult(
            index=index, question=question, status=response.status, seconds=seconds, error=error
        )
    stats = payload.get("vllm_stats", {})
    return RequestResult(
        index=index,
        question=question,
        status=response.status,
        seconds=seconds,
        completion_tokens=payload["usage"]["completion_tokens"],
        tokens_per_second=stats.get("tokens_per_second"),
        time_to_first_token_s=stats.get("time_to_first_token_seconds"),
        answer=payload["choices"][0]["message"]["content"],
    )


def summarise(results: Sequence[RequestResult], wall_s: float) -> Summary:
    ok = [r for r in results if r.status == 200]
    tokens = sum(r.completion_tokens for r in ok)
    rates = [r.tokens_per_second for r in ok if r.tokens_per_second is not None]
    return Summary(
        requests=len(results),
        succeeded=len(ok),
        failed_by_status=dict(Counter(str(r.status) for r in results if r.status != 200)),
        wall_s=round(wall_s, 3),
        completion_tokens=tokens,
        aggregate_tokens_per_second=round(tokens / wall_s, 2),
        mean_request_s=round(statistics.fmean(r.seconds for r in ok), 3) if ok else None,
        max_request_s=max(r.seconds for r in ok) if ok else None,
        mean_tokens_per_second=round(statistics.fmean(rates), 2) if rates else None,
    )


async def run(
    base_url: str,
    n: int,
    model: str | None,
    api_key: str | None,
    max_tokens: int,
    temperature: float,
    head: dict[str, Any],
) -> ConcurrentClientResult:
    """Send the N requests at once, printing each as it completes; the summary last."""
    base_url = base_url.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(headers=_headers(api_key), timeout=timeout) as session:
        model = model or await first_model(session, base_url)
        print(f"Sending {n} concurrent chat requests to {base_url} (model {model})", flush=True)
        start = time.perf_counter()
        tasks = [
            asyncio.create_task(
                ask(session, base_url, i, QUESTIONS[i % len(QUESTIONS)], model, max_tokens,
                    temperature)
            )
            for i in range(n)
        ]  # fmt: skip
        for done in asyncio.as_completed(tasks):
            result = await done
            rate = f"{result.tokens_per_second:.1f} tok/s" if result.tokens_per_second else "-"
            outcome = result.error or f"{result.completion_tokens} tokens, {rate}"
            print(f"  request {result.index + 1}: {result.seconds:6.2f} s  {outcome}", flush=True)
        wall_s = time.perf_counter() - start
    results = sorted((task.result() for task in tasks), key=lambda r: r.index)
    summary = summarise(results, wall_s)
    print(
        f"{summary.succeeded}/{summary.requests} succeeded in {summary.wall_s:.2f} s "
        f"(failed by status: {summary.failed_by_status or 'none'}): "
        f"{summary.completion_tokens} tokens, {summary.aggregate_tokens_per_second:.1f} tok/s "
        f"together; per succeeded request {summary.mean_request_s} s mean, "
        f"{summary.max_request_s} s max, {summary.mean_tokens_per_second} tok/s mean",
        flush=True,
    )
    return ConcurrentClientResult(
        **head,
        base_url=base_url,
        model=model,
        max_tokens=max_tokens,
        temperature=temperature,
        results=results,
        summary=summary,
    )


def plot(result: ConcurrentClientResult, path: Path) -> None:
    """One bar per request: its time, labelled with its tokens per second."""
    with figure(path, figsize=(9, 1.5 + 0.45 * len(result.results))) as (_, ax):
        bars = ax.barh(
            [f"{r.index + 1}: {r.question[:32]}" for r in result.results],
            [r.seconds for r in result.results],
            color=["#4c72b0" if r.status == 200 else "#c44e52" for r in result.results],
        )
        ax.bar_label(
            bars,
            [
                f" {r.completion_tokens} tok, {r.tokens_per_second or 0:.1f} tok/s"
                for r in result.results
            ],
            fontsize=8,
        )
        ax.axvline(result.summary.wall_s, color="black", linestyle=":", label="wall time, all")
        longest = max(r.seconds for r in result.results)
        ax.set_xlim(0, max(longest, result.summary.wall_s) * 1.3)  # room for the labels
        ax.invert_yaxis()
        ax.set_xlabel("seconds")
        ax.legend(loc="lower right")
        ax.set_title(
            f"{result.summary.requests} concurrent chat requests: "
            f"{result.summary.aggregate_tokens_per_second:.1f} tok/s together ({result.model})",
            fontsize=10,
        )


def main(argv: Sequence[str] | None = None) -> ConcurrentClientResult:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--base-url", default="http://localhost:8000")
    parser.add_argument("--api-key", help="sent as a Bearer token")
    parser.add_argument("--n", type=int, default=5, help="concurrent requests")
    parser.add_argument("--model", help="default: the first id of GET /v1/models")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--out", type=Path, help="write concurrent_client.json and .png here")
    args = parser.parse_args(argv)
    shown = [
        "***" if previous == "--api-key" else arg
        for previous, arg in zip(["", *argv], argv, strict=False)
    ]
    head = provenance(MODULE, shown, None)  # the service's config is its own
    result = asyncio.run(
        run(
            args.base_url,
            args.n,
            args.model,
            args.api_key,
            args.max_tokens,
            args.temperature,
            head,
        )
    )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "concurrent_client.json").write_text(result.model_dump_json(indent=2))
        plot(result, args.out / "concurrent_client.png")
    return result


if __name__ == "__main__":
    main()
