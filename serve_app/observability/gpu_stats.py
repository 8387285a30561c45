"""Name and memory of the GPUs an engine uses, read through NVML (no CUDA context needed)."""

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel

_GIB = 1024**3


class GPUMemory(BaseModel):
    name: str
    count: int
    used_gb: float
    total_gb: float
    scope: Literal["replica", "node"]


def read_gpu_memory(gpu_ids: Sequence[int]) -> GPUMemory | None:
    """Memory of `gpu_ids` (the replica's own GPUs), or of every GPU of the node when the
    replica holds none itself (tensor parallelism: vLLM's workers hold them). None without
    NVML or GPUs."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        indices = list(gpu_ids) or list(range(pynvml.nvmlDeviceGetCount()))
        if not indices:
            return None
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
        infos = [pynvml.nvmlDeviceGetMemoryInfo(h) for h in handles]
        name = pynvml.nvmlDeviceGetName(handles[0])
        return GPUMemory(
            name=name.decode() if isinstance(name, bytes) else name,
            count=len(handles),
            used_gb=round(sum(i.used for i in infos) / _GIB, 3),
            total_gb=round(sum(i.total for i in infos) / _GIB, 3),
            scope="replica" if gpu_ids else "node",
        )
    finally:
        pynvml.nvmlShutdown()
