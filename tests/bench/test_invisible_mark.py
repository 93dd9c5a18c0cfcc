"""bench/invisible_mark.py at a reduced size: every picture and attack is reported, the record is
written, and the headline is the JPEG q75 bit accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import invisible_mark as bench


def test_the_script_reports_every_picture_and_attack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    headline = bench.main(["--payloads", "1", "--sizes", "512", "--json", str(tmp_path / "m.json")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"invisible_mark_jpeg75_bit_accuracy={headline}"
    record = json.loads((tmp_path / "m.json").read_text())
    results = record["results"]
    assert [(r["picture"], r["side"]) for r in results] == [("photo", 512), ("grey", 512), ("white", 512)]
    for result in results:
        assert set(result["attacks"]) == set(bench.ATTACKS)
        assert result["attacks"]["png"] == {**result["attacks"]["png"], "bit_accuracy": 1.0, "exact": 1}
        assert result["false_marks"] == 0
        assert result["psnr_db"] > 40 and result["embed_ms"] > 0
    assert headline == record["headline"]["invisible_mark_jpeg75_bit_accuracy"] == 1.0


def test_sizes_below_the_minimum_are_refused() -> None:
    with pytest.raises(SystemExit):
        bench.main(["--sizes", "128"])
