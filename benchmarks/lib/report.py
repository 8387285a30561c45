"""What every benchmark result carries besides its figures, and the plot's frame.

`provenance()` is the head of every result JSON: the command, the commit, the date, the
machine (`machine()`) and the app config it ran with. `default_out()` names a result folder
`benchmarks/results/<machine>/<date>-<topic>/`. `figure()` opens a matplotlib figure
(headless backend) and writes it to its PNG when the drawing is done.
"""

import datetime
import os
import platform
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from serve_app.core.config import Accelerator

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_GIB = 1024**3
DPI = 110
RESULTS = Path(__file__).resolve().parents[1] / "results"
# Where the source tree is a copy (the GPU machine's, whose .git may be the session's first
# commit), the caller names the commit in this variable.
ENV_COMMIT = "GIT_COMMIT"


class Provenance(BaseModel):
    """How to reproduce a result, from which code, where and when."""

    command: str
    commit: str | None = Field(description="git HEAD; '+dirty' when the tree had changes.")
    date: str = Field(description="UTC, ISO 8601, when the run started.")
    machine: dict[str, Any]
    app_config: dict[str, Any] | None = Field(
        description="The app args (AppConfig) our stack or engine ran with; None when the "
        "benchmark only talked to a running service."
    )


def provenance(
    module: str, argv: Sequence[str], app_config: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The `Provenance` fields of `python -m module argv`, as a result JSON's first keys."""
    return Provenance(
        command=" ".join(["python", "-m", module, *argv]),
        commit=commit(),
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        machine=machine(),
        app_config=None if app_config is None else dict(app_config),
    ).model_dump()


def commit() -> str | None:
    """$GIT_COMMIT where the caller names it (a copy of the tree may carry a stale .git),
    else the checked-out commit, with '+dirty' for uncommitted changes."""
    if named := os.environ.get(ENV_COMMIT):
        return named
    root = Path(__file__).resolve().parents[2]
    try:
        head = _git(root, "rev-parse", "HEAD")
        dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head}+dirty" if dirty else head


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def machine_label() -> str:
    """The results folder of this machine: `cpu`, or `gpu-<model>` (e.g. gpu-h200)."""
    from serve_app.observability.gpu_stats import read_gpu_memory

    gpus = read_gpu_memory([])
    if gpus is None:
        return "cpu"
    return "gpu-" + gpus.name.split()[-1].lower()


def default_out(topic: str) -> Path:
    """`benchmarks/results/<machine>/<today>-<topic>`: the one naming scheme of result folders."""
    return RESULTS / machine_label() / f"{datetime.date.today().isoformat()}-{topic}"


def detect_accelerator() -> Accelerator:
    """The GPU when torch sees one, else vLLM's CPU backend."""
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


@contextmanager
def figure(
    path: Path, *grid: int, bottom_margin: float = 0.0, **subplots: Any
) -> Iterator[tuple["Figure", Any]]:
    """`plt.subplots(*grid, **subplots)`; on exit, laid out and saved to `path`, then closed.

    `bottom_margin` (a fraction of the height) keeps room for a figure-level legend.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*grid, **subplots)
    try:
        yield fig, axes
        fig.tight_layout(rect=(0, bottom_margin, 1, 1))
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)


def machine() -> dict[str, Any]:
    """CPU, memory, GPUs and the software versions of this machine."""
    import psutil
    import ray
    import torch
    import vllm

    from serve_app.observability.gpu_stats import read_gpu_memory

    gpus = read_gpu_memory([])
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / _GIB, 1),
        "gpu": None if gpus is None else f"{gpus.count} x {gpus.name}",
        "gpu_memory_gib": None if gpus is None else gpus.total_gb,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "vllm": vllm.__version__,
        "ray": ray.__version__,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
