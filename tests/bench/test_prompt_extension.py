"""bench/prompt_extension.py on the CPU with the tiny model and a tiny token budget: every case is
reported, generation is held to the budget, and the headline is the text-to-image case's ms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import prompt_extension as bench


def test_the_script_reports_each_case_at_its_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    headline = bench.main(["--tiny", "--budgets", "2,4", "--pictures", "0,1", "--rounds", "1",
                           "--json", str(tmp_path / "p.json")])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"prompt_extension_ms={headline}"
    record = json.loads((tmp_path / "p.json").read_text())
    cases = record["cases"]
    assert [(case["pictures"], case["max_new_tokens"]) for case in cases] == [(0, 2), (0, 4), (1, 2), (1, 4)]
    for case in cases:
        assert case["new_tokens"] == case["max_new_tokens"]  # held to the budget, whatever the model says
        assert case["ms"]["median"] > 0 and case["tokens_per_second"] > 0
        assert case["peak_memory_added_gib"] is None  # measured on a GPU only
    assert headline == record["headline"]["prompt_extension_ms"] == pytest.approx(cases[1]["ms"]["median"], abs=0.01)


@pytest.mark.parametrize("arguments", [["--budgets", "0"], ["--pictures", "4"], ["--rounds", "0"]])
def test_settings_out_of_range_are_refused(arguments: list[str]) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--tiny", *arguments])
