"""bench/safety_checker.py with the tiny checkers on the CPU: every checker and batch size is timed,
the record is written, and the headline is the classifier's ms per picture at batch 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import safety_checker as bench


def test_the_script_times_each_checker_and_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    headline = bench.main(["--tiny", "--size", "256", "--rounds", "1", "--json", str(tmp_path / "s.json")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"safety_check_ms={headline}"
    record = json.loads((tmp_path / "s.json").read_text())
    timed = [(t["checker"], t["batch"]) for t in record["timings"]]
    assert timed == [("classifier", 1), ("classifier", 4), ("vl", 1), ("vl", 4)]
    assert record["models"] == {"classifier": "tiny ViT", "vl": "tiny Qwen2.5-VL"}
    classifier_batch_4 = record["timings"][1]
    assert classifier_batch_4["ms_per_picture"] == pytest.approx(
        classifier_batch_4["ms_per_call"]["median"] / 4, rel=1e-3
    )
    assert headline == round(record["timings"][0]["ms_per_picture"], 3) > 0


def test_the_headline_is_the_vl_checker_when_it_runs_alone(tmp_path: Path) -> None:
    bench.main(["--tiny", "--size", "256", "--rounds", "1", "--batches", "1", "--checkers", "vl",
                "--json", str(tmp_path / "v.json")])  # fmt: skip
    record = json.loads((tmp_path / "v.json").read_text())
    assert [t["checker"] for t in record["timings"]] == ["vl"]
    assert record["headline"]["safety_check_ms"] == round(record["timings"][0]["ms_per_picture"], 3)


@pytest.mark.parametrize("option", [["--checkers", "clip"], ["--batches", "2,4"], ["--batches", "0,1"]])
def test_bad_options_are_refused(option: list[str]) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--tiny", *option])
