"""Prometheus metrics (docs/metrics.md).

- `shared_dir`: the multi-process mode (several API processes write one directory that a scrape
  of any of them reads); importable before `prometheus_client`, as it must be.
- `recorded`: the counters and histograms, and the one-line calls that record them.
- `http`: the pure ASGI middleware that counts and times requests.
- `gpu`: GPU memory, read at the scrape, or published by the engine's process (multi-process mode).
- `scrape`: what a scrape reads at its own time (the queue and workers from the task database) and
  the text it answers; `serve_worker_metrics` for `qwen-image worker` processes.

This package imports nothing of the server's, so any layer may record into it.
"""
