"""Which threads of which processes burn CPU during a benchmark level (Linux, via psutil).

Take a `snapshot()` before and after the load; `busiest(before, after, seconds)` ranks
every thread by the cores it used in between. A serving process whose main thread sits
near 1.0 core is saturated: its event loop is the bottleneck, whatever the GPU does.
"""

from pathlib import Path

import psutil
from pydantic import BaseModel

ThreadKey = tuple[int, int]  # (pid, thread id)


class ThreadTimes(BaseModel):
    process: str
    thread: str
    cpu_s: float


class ThreadUsage(BaseModel):
    """Cores one thread used over a window (1.0 = one core all the time)."""

    process: str
    pid: int
    thread: str
    cores: float


def snapshot() -> dict[ThreadKey, ThreadTimes]:
    """CPU seconds so far of every thread of every process this user may read."""
    times: dict[ThreadKey, ThreadTimes] = {}
    for proc in psutil.process_iter(["pid", "cmdline", "name"]):
        try:
            cmdline = proc.info["cmdline"] or [proc.info["name"] or "?"]
            name = process_name(cmdline)
            for thread in proc.threads():
                times[(proc.pid, thread.id)] = ThreadTimes(
                    process=name,
                    thread=_thread_name(proc.pid, thread.id),
                    cpu_s=thread.user_time + thread.system_time,
                )
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return times


def busiest(
    before: dict[ThreadKey, ThreadTimes],
    after: dict[ThreadKey, ThreadTimes],
    seconds: float,
    top: int = 15,
) -> list[ThreadUsage]:
    """The `top` threads by cores used between two snapshots `seconds` apart."""
    usages = [
        ThreadUsage(
            process=times.process,
            pid=key[0],
            thread=times.thread,
            cores=round((times.cpu_s - (before[key].cpu_s if key in before else 0.0)) / seconds, 3),
        )
        for key, times in after.items()
    ]
    usages.sort(key=lambda usage: usage.cores, reverse=True)
    return usages[:top]


def process_name(cmdline: list[str]) -> str:
    """Ray workers name themselves `ray::<actor>`; others are named by their command."""
    first = cmdline[0]
    if first.startswith("ray::") or first.startswith("VLLM::"):
        return first.split()[0]
    return " ".join(Path(part).name if i == 0 else part for i, part in enumerate(cmdline[:3]))


def _thread_name(pid: int, tid: int) -> str:
    try:
        return Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except OSError:
        return "?"
