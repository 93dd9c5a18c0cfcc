"""bench/wake_latency.py against the test PostgreSQL: it measures every change and reports each
series (PostgreSQL only: QWEN_IMAGE_TEST_POSTGRES_URL)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench import wake_latency as bench

POSTGRES_ENV = "QWEN_IMAGE_TEST_POSTGRES_URL"


@pytest.mark.skipif(not os.environ.get(POSTGRES_ENV), reason=f"PostgreSQL only: set {POSTGRES_ENV}")
def test_the_script_reports_the_wake_latency(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench.main(["--changes", "3", "--json", str(tmp_path / "w.json")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("wake_latency_ms=") and float(lines[-1].split("=")[1]) > 0
    record = json.loads((tmp_path / "w.json").read_text())
    for series in ("wake_ms", "wake_after_write_ms", "write_ms", "write_without_notify_ms"):
        assert record[series]["n"] == 3
    # The reader woke on the notification, not on its 60 s poll fallback.
    assert record["wake_ms"]["max"] < bench.POLL_FALLBACK_SECONDS * 1000
