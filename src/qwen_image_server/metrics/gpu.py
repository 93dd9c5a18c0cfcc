"""GPU memory: torch's allocator statistics for each GPU, in a process that runs the engine.

torch is never imported for this: the engine's process has imported it already, and a process
without it (API only) reports nothing. In the single-process mode a scrape reads the figures at its
own time (`GpuMemoryCollector`). In the multi-process mode the scraped process may not be the
engine's, so the engine's process writes them into the shared directory instead (`publish`, called
by the worker a few times a lease), where any scrape finds them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge
from prometheus_client.core import GaugeMetricFamily, Metric

from qwen_image_server.metrics.shared_dir import shared_dir

ALLOCATED = ("qwen_image_gpu_memory_allocated_bytes", "GPU memory held by tensors now.")
PEAK = ("qwen_image_gpu_memory_peak_bytes", "The most GPU memory tensors held since the process started.")
TOTAL = ("qwen_image_gpu_memory_total_bytes", "The GPU's memory.")


@dataclass(frozen=True)
class DeviceMemory:
    device: str
    allocated: int
    peak: int
    total: int


def readings(cuda: Any = None) -> list[DeviceMemory]:
    """Each GPU's figures; none if CUDA was never initialised here (no GPU work yet). `cuda` is
    `torch.cuda`, taken from the modules already imported when not given."""
    if cuda is None:
        # getattr: torch may still be importing, on the engine's loading thread (then CUDA is not
        # initialised yet either).
        cuda = getattr(sys.modules.get("torch"), "cuda", None)
    if cuda is None or not getattr(cuda, "is_initialized", lambda: False)():
        return []
    return [
        DeviceMemory(
            f"cuda:{index}",
            cuda.memory_allocated(index),
            cuda.max_memory_allocated(index),
            cuda.get_device_properties(index).total_memory,
        )
        for index in range(cuda.device_count())
    ]


class GpuMemoryCollector:
    """The figures read at the scrape (single-process mode)."""

    def __init__(self, cuda: Any = None) -> None:
        self._cuda = cuda

    def collect(self) -> Iterator[Metric]:
        found = readings(self._cuda)
        if not found:
            return
        families = [GaugeMetricFamily(name, help_, labels=["device"]) for name, help_ in (ALLOCATED, PEAK, TOTAL)]
        for memory in found:
            for family, figure in zip(families, (memory.allocated, memory.peak, memory.total), strict=True):
                family.add_metric([memory.device], figure)
        yield from families


# Written only in the multi-process mode, and then read from the directory, not from a registry. The
# most recent value wins: one engine process per GPU.
_PUBLISHED = [
    Gauge(name, help_, ["device"], registry=None, multiprocess_mode="mostrecent")
    for name, help_ in (ALLOCATED, PEAK, TOTAL)
]


def publish(cuda: Any = None) -> None:
    """Write this process's figures into the shared directory (multi-process mode only)."""
    if shared_dir() is None:
        return
    for memory in readings(cuda):
        for gauge, figure in zip(_PUBLISHED, (memory.allocated, memory.peak, memory.total), strict=True):
            gauge.labels(memory.device).set(figure)
