"""A `qwen-image worker` process (no HTTP API) serves what it records on its own port."""

from __future__ import annotations

import socket

import httpx
from prometheus_client.parser import text_string_to_metric_families

from qwen_image_server.metrics import recorded
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
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("qwen_image_callback_attempts_total", (("outcome", "refused"),))] >= 1
    assert not [name for name, _ in samples if name.startswith("qwen_image_queue")]  # the API's, from the database
