"""A scrape's answer: what was recorded (in this process's memory, or in the shared directory of
the multi-process mode), plus the gauges read at the scrape's own time: the queue and the workers
(from the task database, so they are right whatever process or host answers), and GPU memory (in
a process that runs the engine)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from qwen_image_server.metrics.gpu import GpuMemoryCollector
from qwen_image_server.metrics.shared_dir import shared_dir


@dataclass(frozen=True)
class ModelQueue:
    """One served model's unfinished tasks and ready workers, as the scrape read them."""

    model: str
    queued: int = 0
    oldest_queued_at: datetime | None = None
    running: int = 0
    ready_workers: int = 0


@dataclass(frozen=True)
class Readings:
    """What a scrape read from the task database."""

    now: datetime
    models: Sequence[ModelQueue]
    live_workers: int


def exposition(readings: Readings, *, gpu: bool) -> bytes:
    """The Prometheus text format of everything; `gpu`: this process runs the engine."""
    return generate_latest(_All([_recorded(), _QueueGauges(readings), *(_gpu_memory() if gpu else [])]))


def serve_worker_metrics(host: str, port: int) -> Callable[[], None]:
    """For a process without the HTTP API (`qwen-image worker`): what it records (the tasks it
    ends, their run and step times, images, callbacks) and GPU memory, at http://host:port/metrics,
    without a key, from a thread of prometheus_client's. The queue gauges come from the API.
    Returns the call that stops it (the process's end stops it too)."""
    registry = CollectorRegistry()
    registry.register(_All([_recorded(), *_gpu_memory()]))
    server, _thread = start_http_server(port, addr=host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return stop


def _recorded() -> Collector:
    directory = shared_dir()
    if directory is None:
        return REGISTRY  # this process's own values (and the process and Python collectors)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return registry


def _gpu_memory() -> list[Collector]:
    """GPU memory read now; in the multi-process mode, none: the engine's process published it."""
    return [GpuMemoryCollector()] if shared_dir() is None else []


class _All:
    def __init__(self, sources: Iterable[Collector]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        for source in self._sources:
            yield from source.collect()


class _QueueGauges:
    def __init__(self, readings: Readings) -> None:
        self._readings = readings

    def collect(self) -> Iterator[Metric]:
        readings = self._readings
        depth = GaugeMetricFamily("qwen_image_queue_depth", "Tasks waiting to run.", labels=["model"])
        age = GaugeMetricFamily(
            "qwen_image_queue_oldest_age_seconds", "Age of the oldest queued task (0: none).", labels=["model"]
        )
        running = GaugeMetricFamily("qwen_image_tasks_running", "Tasks being run by a worker.", labels=["model"])
        ready = GaugeMetricFamily(
            "qwen_image_workers_ready", "Live workers ready with the model loaded and no problem.", labels=["model"]
        )
        for queue in readings.models:
            oldest = queue.oldest_queued_at
            depth.add_metric([queue.model], queue.queued)
            age.add_metric([queue.model], max((readings.now - oldest).total_seconds(), 0.0) if oldest else 0.0)
            running.add_metric([queue.model], queue.running)
            ready.add_metric([queue.model], queue.ready_workers)
        yield from (depth, age, running, ready)
        yield GaugeMetricFamily(
            "qwen_image_workers_live", "Workers seen within a lease, in any state.", value=readings.live_workers
        )
