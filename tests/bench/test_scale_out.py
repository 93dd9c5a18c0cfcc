"""bench/scale_out.py against the test PostgreSQL with 1 and 2 stand-in worker processes: every task
runs, and the record has a level per worker count (PostgreSQL only: QWEN_IMAGE_TEST_POSTGRES_URL)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench import scale_out as bench

POSTGRES_ENV = "QWEN_IMAGE_TEST_POSTGRES_URL"


@pytest.mark.skipif(not os.environ.get(POSTGRES_ENV), reason=f"PostgreSQL only: set {POSTGRES_ENV}")
def test_the_script_reports_throughput_and_efficiency(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--workers", "1,2", "--tasks-per-worker", "2", "--steps", "2", "--step-ms", "20"]
    bench.main([*argv, "--json", str(tmp_path / "s.json")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("scale_out_efficiency_2=") and float(lines[-1].split("=")[1]) > 0
    record = json.loads((tmp_path / "s.json").read_text())
    assert [(level["workers"], level["tasks"]) for level in record["levels"]] == [(1, 2), (2, 4)]
    assert record["levels"][0]["efficiency"] == 1.0
    assert all(level["tasks_per_s"] > 0 for level in record["levels"])


def test_a_stand_in_image_names_its_host() -> None:
    assert bench.host_of(bench.stamped_png("worker-a")) == "worker-a"
