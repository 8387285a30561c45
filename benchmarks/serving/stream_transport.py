"""How many token chunks a second one ingress replica can pull from an LLM replica, by transport.

The ingress reads every request's tokens through `serve_app.api.llm_client.LLMServerClient`,
one chunk per engine step and stream. This measures that hop alone, with no engine and no
HTTP: a deployment yields one-token vLLM `RequestOutput`s as fast as it can, and a second
deployment drains S concurrent streams of them through `LLMServerClient.generate`, once per
transport
(`engine_transport` in serve_config.yaml): Serve's gRPC channel between replicas, and Ray's
actor-task streaming. With `--source-modes`, once per way of running the producing
replica's user code (SOURCE_MODES): on the replica's main loop (what LLMServer does,
`LLM_SERVER_ENV_DEFAULTS`) or on Serve's separate user-code thread (Serve's default, each
chunk handed to the replica's main loop with `call_soon_threadsafe`).

    python -m benchmarks.serving.stream_transport [--streams 1 32 128] [--chunks 8000]
        [--repeats 3] [--source-modes one-loop separate-thread] [--out DIR]

Writes `stream_transport.json` and `stream_transport.png` under `--out`.
"""

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import get_args

import ray
from pydantic import BaseModel
from ray import serve
from ray.serve.handle import DeploymentHandle
from vllm.outputs import CompletionOutput
from vllm.sampling_params import RequestOutputKind

from benchmarks.lib.report import default_out, figure, provenance
from serve_app.api.llm_client import LLMServerClient
from serve_app.core.config import EngineTransport
from serve_app.core.constants import LLM_SERVER_ENV_DEFAULTS
from serve_app.vllm_compat import EngineRequest, RequestOutput, SamplingParams

MODULE = "benchmarks.serving.stream_transport"

TRANSPORTS: tuple[EngineTransport, ...] = get_args(EngineTransport)
# Environments of the producing replica: LLMServer's, and Serve's default.
SOURCE_MODES: dict[str, dict[str, str]] = {
    "one-loop": dict(LLM_SERVER_ENV_DEFAULTS),
    "separate-thread": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "1"},
}


def one_token_output(request_id: str, step: int, last: bool) -> RequestOutput:
    """A DELTA output of one token, as vLLM's engine yields it."""
    choice = CompletionOutput(
        index=0,
        text=f" t{step}",
        token_ids=[step],
        cumulative_logprob=None,
        logprobs=None,
        finish_reason="length" if last else None,
    )
    return RequestOutput(request_id, None, [1], None, [choice], finished=last)


@serve.deployment(max_ongoing_requests=1024)
class ChunkSource:
    """Stands in for LLMServer: `max_tokens` one-token outputs, as fast as they go out."""

    async def generate(self, request: EngineRequest) -> AsyncIterator[RequestOutput]:
        for i in range(request.params.max_tokens):
            yield one_token_output(request.request_id, i, i == request.params.max_tokens - 1)


@serve.deployment(max_ongoing_requests=1024)
class ChunkSink:
    """Stands in for the ingress: drains concurrent streams through `LLMServerClient`."""

    def __init__(self, source: DeploymentHandle) -> None:
        self._clients = {transport: LLMServerClient(source, transport) for transport in TRANSPORTS}

    async def drain(self, transport: EngineTransport, streams: int, chunks: int) -> float:
        """Chunks a second over `streams` concurrent streams of `chunks // streams` each."""
        client = self._clients[transport]
        per_stream = max(1, chunks // streams)

        async def one(i: int) -> int:
            params = SamplingParams(max_tokens=per_stream, output_kind=RequestOutputKind.DELTA)
            outputs = client.generate({"prompt_token_ids": [1]}, params, f"s{i}")
            return sum([1 async for _ in outputs])

        start = time.perf_counter()
        received = await asyncio.gather(*(one(i) for i in range(streams)))
        return sum(received) / (time.perf_counter() - start)


class Point(BaseModel):
    transport: EngineTransport
    source_mode: str
    streams: int
    chunks_per_s: list[float]
    median_chunks_per_s: float


def measure(streams: Sequence[int], chunks: int, repeats: int, source_mode: str) -> list[Point]:
    """Every transport at every stream count: one warm-up, then `repeats` timed runs."""
    source = ChunkSource.options(
        ray_actor_options={"runtime_env": {"env_vars": SOURCE_MODES[source_mode]}}
    )
    sink = serve.run(ChunkSink.bind(source.bind()), name="stream-transport")
    points = []
    for count in streams:
        for transport in TRANSPORTS:
            sink.drain.remote(transport, count, chunks // 10).result()
            rates = [sink.drain.remote(transport, count, chunks).result() for _ in range(repeats)]
            points.append(
                Point(
                    transport=transport,
                    source_mode=source_mode,
                    streams=count,
                    chunks_per_s=[round(r) for r in rates],
                    median_chunks_per_s=round(statistics.median(rates)),
                )
            )
            print(
                f"{transport:>5} {source_mode:>15} {count:>4} streams: "
                f"{points[-1].median_chunks_per_s} chunks/s"
            )
    serve.delete("stream-transport")
    return points


def plot(points: Sequence[Point], path: Path) -> None:
    streams = sorted({p.streams for p in points})
    series = list(dict.fromkeys((p.transport, p.source_mode) for p in points))
    width = 0.8 / len(series)
    with figure(path, 1, 1, figsize=(7, 4.2)) as (_, ax):
        for i, (transport, mode) in enumerate(series):
            rates = {
                p.streams: p.median_chunks_per_s
                for p in points
                if (p.transport, p.source_mode) == (transport, mode)
            }
            xs = [j + i * width for j in range(len(streams))]
            ax.bar(xs, [rates[s] for s in streams], width, label=f"{transport}, {mode}")
        ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(streams))])
        ax.set_xticklabels([str(s) for s in streams])
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("chunks/s (median)")
        ax.set_title("One ingress replica pulling token chunks from one LLM replica")
        ax.legend(title="engine_transport, producer's user code")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--chunks", type=int, default=8000, help="chunks per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--source-modes", nargs="+", choices=list(SOURCE_MODES), default=["one-loop"]
    )
    parser.add_argument(
        "--out", type=Path, help="default: benchmarks/results/<machine>/<date>-stream-transport"
    )
    args = parser.parse_args(argv)
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        points = [
            point
            for mode in args.source_modes
            for point in measure(args.streams, args.chunks, args.repeats, mode)
        ]
    finally:
        serve.shutdown()
        ray.shutdown()
    args.out = args.out or default_out("stream-transport")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        # No app: a stand-in LLM server streams to the client the ingress uses.
        **provenance(MODULE, sys.argv[1:], None),
        "points": [p.model_dump() for p in points],
    }
    (args.out / "stream_transport.json").write_text(json.dumps(report, indent=2))
    plot(points, args.out / "stream_transport.png")


if __name__ == "__main__":
    main()
