"""bench/api_ceiling.py: wrk's report read right, and a short run of both servers (where wrk is installed)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from bench import api_ceiling as bench

REPORT = """Running 1s test @ http://127.0.0.1:18777/
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.43ms    2.21ms  16.42ms   77.61%
  Latency Distribution
     50%  812.00us
     75%    4.57ms
     90%    6.80ms
     99%    1.01s
  592 requests in 1.00s, 1.47MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:    591.31
"""


def test_wrk_report_figures() -> None:
    assert bench.parse_wrk(REPORT) == bench.Load(per_second=591.31, p50_ms=0.812, p99_ms=1010.0, failures=7)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk; .ci/run does)")
def test_a_short_run_compares_ours_with_the_ceiling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench, "POLLED_TASKS", 5)
    argv = ["api_ceiling.py", "--rounds", "1", "--seconds", "1", "--connections", "2", "--json", str(tmp_path / "r")]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("api_ceiling_ratio=") and float(last.split("=")[1]) > 0
    record = json.loads((tmp_path / "r").read_text())
    for name in ("ours", "ceiling"):
        for phase in ("creates", "polls"):
            assert record[f"{name}_{phase}"]["failures"] == 0 and record[f"{name}_{phase}"]["per_s"] > 0
