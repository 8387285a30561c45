"""What every benchmark result carries besides its figures: the machine, and the plot's frame.

`machine()` and `detect_accelerator()` describe where the figures were measured; `figure()`
opens a matplotlib figure (headless backend) and writes it to its PNG when the drawing is done.
"""

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Accelerator = Literal["cpu", "gpu"]
_GIB = 1024**3
DPI = 110


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

    from deployments.gpu_stats import read_gpu_memory

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
