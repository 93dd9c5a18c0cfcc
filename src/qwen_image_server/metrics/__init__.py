"""Prometheus metrics (docs/metrics.md).

- `shared_dir`: the multi-process mode (several API processes write one directory that a scrape
  of any of them reads); importable before `prometheus_client`, as it must be.
- `recorded`: the counters and histograms, and the one-line calls that record them.
- `http`: the pure ASGI middleware that counts and times requests.
- `scrape`: what a scrape reads at its own time (the queue from the task database, GPU memory) and
  the text it answers.

This package imports nothing of the server's, so any layer may record into it.
"""
