"""bench/c2pa_cost.py at a small size: every format is signed and read back, the manifest adds a few
KB (no thumbnail), and the headline is the median sign time."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from bench import c2pa_cost as bench


def test_the_script_reports_each_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    headline = bench.main(["--size", "128", "--rounds", "2", "--json", str(tmp_path / "c.json")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"c2pa_sign_ms={headline}" and headline > 0
    formats = {entry["format"]: entry for entry in json.loads((tmp_path / "c.json").read_text())["formats"]}
    assert set(formats) == {"PNG", "JPEG", "WEBP"}
    for entry in formats.values():
        assert 1_000 < entry["bytes_added"] < 20_000
        assert entry["sign_ms"] > 0 and entry["read_ms"] > 0
    assert headline == round(statistics.median(entry["sign_ms"] for entry in formats.values()), 3)
