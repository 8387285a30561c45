"""Where a serving process spends its time during a benchmark level: py-spy samples.

`profiled(out_dir)` runs `py-spy record` on every serving process (our
ingress and LLMServer replicas, bare vLLM's API server, vLLM's engine core) while its block
runs, without pausing them (`--nonblocking`). Each process's collapsed stacks land in
`<out_dir>/<name>-<pid>.txt` (the input of flamegraph.pl or speedscope.app) and
`summarize` turns them into the shares of samples that name where the time goes. py-spy
leaves out the samples it knows are idle (a thread blocked in a syscall it recognises), so
`busy_cores` approximates the CPU a process's Python threads used. Threads parked in native
code with no Python frame above still count: Ray's core-worker loop shows as
`Worker.main_loop`, native threads as `Thread.run` at the top of the stack. Read those
shares as waiting; a thread near 1.0 core on Python functions is a saturated event loop.
"""

import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
from pydantic import BaseModel

from benchmarks.lib.process_cpu import process_name
from serve_app.core.constants import INGRESS_DEPLOYMENT, LLM_SERVER_DEPLOYMENT

SAMPLES_PER_S = 200
TOP = 15
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
SAMPLING = "Sampling process"  # what py-spy prints once it samples


def _replica_of(deployment: str) -> Callable[[str], bool]:
    """Serve replicas name their process `ray::ServeReplica:<app>:<deployment>` (Ray may
    append the method running)."""
    return lambda name: name.startswith("ray::ServeReplica:") and f":{deployment}" in name


# Short names of the processes to sample, by how they name themselves.
TARGETS: dict[str, Callable[[str], bool]] = {
    "ingress": _replica_of(INGRESS_DEPLOYMENT),
    "llm-server": _replica_of(LLM_SERVER_DEPLOYMENT),
    "engine-core": lambda name: name.startswith("VLLM::EngineCore"),
    "bare-api-server": lambda name: "vllm.entrypoints.openai.api_server" in name,
}


class FunctionShare(BaseModel):
    function: str
    share: float  # of the process's samples


class ProcessProfile(BaseModel):
    """One process's samples over a level."""

    name: str
    pid: int
    samples: int
    busy_cores: float
    threads: dict[str, float]  # cores per thread, by py-spy's `thread (TID): NAME`
    top_self: list[FunctionShare]  # the function running when sampled
    top_inclusive: list[FunctionShare]  # anywhere on the sampled stack
    error: str | None = None


def py_spy() -> str | None:
    """The py-spy binary: on PATH or beside this Python (a --target install's bin/)."""
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


def serving_processes() -> dict[str, int]:
    """`<short name>-<pid>` -> pid of every running process that TARGETS names."""
    found = {}
    for proc in psutil.process_iter(["pid", "cmdline", "name"]):
        try:
            name = process_name(proc.info["cmdline"] or [proc.info["name"] or "?"])
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        for short, matches in TARGETS.items():
            if matches(name):
                found[f"{short}-{proc.info['pid']}"] = proc.info["pid"]
    return found


@contextmanager
def profiled(out_dir: Path) -> Iterator[dict[str, ProcessProfile]]:
    """Sample every serving process while the block runs; the yielded dict is filled with
    their profiles when it ends."""
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    out_dir.mkdir(parents=True, exist_ok=True)
    recorders: dict[str, tuple[int, subprocess.Popen]] = {}
    for name, pid in serving_processes().items():
        command = [
            binary, "record", "--pid", str(pid), "--rate", str(SAMPLES_PER_S), "--format", "raw",
            "--threads", "--nonblocking", "--output", str(out_dir / f"{name}.txt"),
        ]  # fmt: skip
        with (out_dir / f"{name}.log").open("w") as log:
            recorders[name] = (pid, subprocess.Popen(command, stdout=log, stderr=log))
    _wait_until_sampling(out_dir, {name: recorder for name, (_, recorder) in recorders.items()})
    profiles: dict[str, ProcessProfile] = {}
    start = time.monotonic()
    try:
        yield profiles
    finally:
        seconds = time.monotonic() - start
        for name, (pid, recorder) in recorders.items():
            recorder.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
            try:
                recorder.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait()
            output = out_dir / f"{name}.txt"
            error = None if output.exists() else _error(out_dir / f"{name}.log", recorder)
            profiles[name] = summarize(name, pid, output, seconds, error)


def _wait_until_sampling(out_dir: Path, recorders: dict[str, subprocess.Popen]) -> None:
    """Until every py-spy samples (it takes ~1 s to attach) or has given up."""
    deadline = time.monotonic() + START_TIMEOUT_S
    waiting = dict(recorders)
    while waiting and time.monotonic() < deadline:
        for name, recorder in list(waiting.items()):
            if recorder.poll() is not None or SAMPLING in (out_dir / f"{name}.log").read_text():
                del waiting[name]
        time.sleep(0.05)


def _error(log: Path, recorder: subprocess.Popen) -> str:
    """py-spy's own `Error: ...` line (a backtrace follows it), else its exit status."""
    lines = log.read_text().splitlines()
    return next((line for line in lines if line.startswith("Error")), f"exit {recorder.returncode}")


def summarize(
    name: str, pid: int, collapsed: Path, seconds: float, error: str | None = None
) -> ProcessProfile:
    """Shares of samples per function from py-spy's raw output, where each line is
    `thread (TID): NAME;outer (file:line);...;inner (file:line) COUNT`."""
    per_thread: Counter[str] = Counter()
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    lines = collapsed.read_text().splitlines() if collapsed.exists() else []
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        functions = [_function(frame) for frame in frames] or ["?"]
        total += count
        per_thread[thread] += count
        own[functions[-1]] += count
        for function in set(functions):
            anywhere[function] += count
    rate = SAMPLES_PER_S * seconds if seconds > 0 else 1.0

    def shares(counter: Counter[str]) -> list[FunctionShare]:
        return [
            FunctionShare(function=function, share=round(count / total, 3))
            for function, count in counter.most_common(TOP)
        ]

    return ProcessProfile(
        name=name,
        pid=pid,
        samples=total,
        busy_cores=round(total / rate, 3),
        threads={thread: round(count / rate, 3) for thread, count in per_thread.most_common()},
        top_self=shares(own),
        top_inclusive=shares(anywhere),
        error=error,
    )


def _function(frame: str) -> str:
    """`func (path/to/module.py:123)` -> `func (module.py)`: lines of one function merged."""
    function, _, location = frame.partition(" (")
    file = location.rstrip(")").rpartition(":")[0] or location.rstrip(")")
    return f"{function} ({Path(file).name})" if file else function
