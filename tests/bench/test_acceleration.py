"""bench/acceleration.py on the CPU with the tiny model: every level is reported, `none` against
itself is identical, and a level that skips blocks says so in its counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import acceleration as bench


def test_the_script_reports_each_level_against_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qwen_image_server.engine import acceleration

    shipped = dict(acceleration.PLANS)
    try:
        # High at a threshold the tiny model's random weights reach, so that it skips blocks here.
        arguments = ["--tiny", "--steps", "8", "--rounds", "1", "--thresholds", "high=0.6"]
        bench.main([*arguments, "--json", str(tmp_path / "a.json")])
    finally:
        acceleration.PLANS.update(shipped)  # the script sets thresholds process-wide
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("acceleration_speedup=") and float(lines[-1].split("=")[1]) > 0
    record = json.loads((tmp_path / "a.json").read_text())
    levels = {level["level"]: level for level in record["levels"]}
    assert set(levels) == {"none", "regular", "high"}
    none, regular, high = levels["none"], levels["regular"], levels["high"]
    blocks = record["settings"]["block_count"]
    assert none["transformer_calls_per_image"] == 8  # CFG as one call per step
    assert none["block_computations_per_image"] == 8 * blocks
    assert none["mean_abs_pixel_difference"] == 0 and none["psnr_db"] is None  # identical: infinite PSNR
    assert (regular["threshold"], high["threshold"]) == (0.08, 0.6)
    assert high["block_computations_per_image"] < none["block_computations_per_image"]
    assert high["mean_abs_pixel_difference"] > 0
    for level in levels.values():
        assert level["seconds_per_image"] > 0


def test_thresholds_are_only_for_the_cache_levels() -> None:
    with pytest.raises(SystemExit):
        bench.main(["--tiny", "--thresholds", "none=0.1"])


def test_lightning_makes_high_a_few_steps_without_cfg(tmp_path: Path) -> None:
    bench.main(["--tiny", "--steps", "8", "--rounds", "1", "--lightning", "--lightning-steps", "4",
                "--json", str(tmp_path / "l.json")])  # fmt: skip
    levels = {level["level"]: level for level in json.loads((tmp_path / "l.json").read_text())["levels"]}
    assert levels["high"]["lightning_steps"] == 4 and levels["high"]["threshold"] is None
    assert levels["high"]["transformer_calls_per_image"] == 4  # one call per step: no CFG
