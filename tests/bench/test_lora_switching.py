"""bench/lora_switching.py on the CPU with the tiny model: every configuration is timed and reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import lora_switching as bench


def test_the_script_times_each_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench.main(["--tiny", "--steps", "2", "--rounds", "1", "--json", str(tmp_path / "s.json")])
    assert capsys.readouterr().out.splitlines()[-1].startswith("lora_switch_ms=")
    seconds = json.loads((tmp_path / "s.json").read_text())["seconds_per_image"]
    assert set(seconds) == {"plain", "fused", "first use", "same", "switching"}
    assert all(value > 0 for value in seconds.values())
