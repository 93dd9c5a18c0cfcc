"""Metrics of processes other than an API process: a `qwen-image worker` (no HTTP API) serves what
it records on its own port; a process that set up the shared directory after importing the
recorders (as `serve` will) records into it."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from qwen_image_server.metrics import recorded
from qwen_image_server.metrics.gpu import GpuMemoryCollector, publish
from qwen_image_server.metrics.scrape import serve_worker_metrics


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_worker_port_serves_the_recorded_metrics() -> None:
    port = _free_port()
    stop = serve_worker_metrics("127.0.0.1", port)
    try:
        recorded.callback_attempted("refused", "refused")
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        stop()
    samples = parsed(text)
    assert samples[("qwen_image_callback_attempts_total", (("outcome", "refused"),))] >= 1
    assert not [name for name, _ in samples if name.startswith("qwen_image_queue")]  # the API's, from the database


SWITCH_AFTER_IMPORT = """
import sys
from pathlib import Path
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from qwen_image_server.metrics import recorded  # as the commands do, before serve sets up the directory
from qwen_image_server.metrics.shared_dir import use_shared_dir

directory = use_shared_dir(Path(sys.argv[1]))
recorded.task_created("qwen-image", "openai")
registry = CollectorRegistry()
MultiProcessCollector(registry, path=str(directory))
sys.stdout.write(generate_latest(registry).decode())
"""


def test_a_process_that_imported_the_recorders_before_the_shared_dir_records_into_it(tmp_path: Path) -> None:
    environment = {"PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    command = [sys.executable, "-c", SWITCH_AFTER_IMPORT, str(tmp_path / "metrics")]
    text = subprocess.run(command, env=environment, check=True, capture_output=True, text=True, timeout=60).stdout
    samples = parsed(text)
    assert samples[("qwen_image_tasks_created_total", (("dialect", "openai"), ("model", "qwen-image")))] == 1


class StandInCuda:
    """What metrics/gpu.py calls of `torch.cuda`, for two GPUs (no GPU on the test machines)."""

    def is_initialized(self) -> bool:
        return True

    def device_count(self) -> int:
        return 2

    def memory_allocated(self, index: int) -> int:
        return 1000 * (index + 1)

    def max_memory_allocated(self, index: int) -> int:
        return 3000 * (index + 1)

    def get_device_properties(self, index: int) -> SimpleNamespace:
        return SimpleNamespace(total_memory=80_000)


def test_gpu_memory_is_read_at_the_scrape_in_one_process() -> None:
    text = generate_latest(GpuMemoryCollector(StandInCuda())).decode()
    samples = parsed(text)
    assert samples[("qwen_image_gpu_memory_allocated_bytes", (("device", "cuda:1"),))] == 2000
    assert samples[("qwen_image_gpu_memory_peak_bytes", (("device", "cuda:0"),))] == 3000
    assert samples[("qwen_image_gpu_memory_total_bytes", (("device", "cuda:1"),))] == 80_000
    publish(StandInCuda())  # the single-process mode: nothing to write (and no shared directory)


PUBLISH_GPU_MEMORY = """
import sys
from pathlib import Path
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from qwen_image_server.metrics.gpu import publish
from qwen_image_server.metrics.shared_dir import use_shared_dir
from tests.unit.test_metrics_processes import StandInCuda

directory = use_shared_dir(Path(sys.argv[1]))
publish(StandInCuda())
registry = CollectorRegistry()
MultiProcessCollector(registry, path=str(directory))
sys.stdout.write(generate_latest(registry).decode())
"""


def test_in_the_multi_process_mode_the_engine_process_publishes_gpu_memory(tmp_path: Path) -> None:
    root = Path(__file__).parents[2]
    environment = {"PYTHONPATH": f"{root / 'src'}:{root}"}
    command = [sys.executable, "-c", PUBLISH_GPU_MEMORY, str(tmp_path / "metrics")]
    text = subprocess.run(command, env=environment, check=True, capture_output=True, text=True, timeout=60).stdout
    samples = parsed(text)
    assert samples[("qwen_image_gpu_memory_allocated_bytes", (("device", "cuda:0"),))] == 1000
    assert samples[("qwen_image_gpu_memory_peak_bytes", (("device", "cuda:1"),))] == 6000


def parsed(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
