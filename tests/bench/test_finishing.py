"""bench/finishing.py runs and reports every step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import finishing as bench


def test_the_script_reports_each_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench.main(["--size", "256", "--rounds", "1", "--json", str(tmp_path / "f.json")])
    assert capsys.readouterr().out.splitlines()[-1].startswith("finishing_overhead_ms=")
    ms = json.loads((tmp_path / "f.json").read_text())["ms_per_image"]
    assert set(ms) == set(bench.STEPS) and all(value > 0 for value in ms.values())
