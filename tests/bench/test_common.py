"""The statistics and output helpers every benchmark prints through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench.common import Summary, emit, percentile, table


def test_percentile_interpolates_between_ranks_like_numpy() -> None:
    samples = [10.0, 1.0, 4.0, 3.0, 2.0]  # sorted: 1 2 3 4 10
    assert percentile(samples, 0) == 1.0
    assert percentile(samples, 50) == 3.0
    assert percentile(samples, 100) == 10.0
    assert percentile(samples, 95) == pytest.approx(4 + 0.8 * 6)  # rank 3.8 of 0..4
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_and_its_scaling() -> None:
    summary = Summary.of([0.001, 0.002, 0.003, 0.010])
    assert (summary.n, summary.min, summary.max) == (4, 0.001, 0.010)
    assert summary.median == pytest.approx(0.0025)
    in_ms = summary.scaled(1000)
    assert in_ms.median == pytest.approx(2.5) and in_ms.p95 == pytest.approx(summary.p95 * 1000)
    assert in_ms.n == 4


def test_table_aligns_columns() -> None:
    text = table(["name", "value"], [("a", 1.5), ("longer", 200.25)])
    lines = text.splitlines()
    assert lines[0].startswith("name") and lines[1].startswith("------")
    assert lines[2].endswith("1.500") and lines[3].endswith("200.2")
    assert len({len(line) for line in lines[1:]}) == 1


def test_emit_prints_the_record_then_the_headline_last(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    emit({"benchmark": "x", "value": 1}, ("duty_cycle", 0.991), tmp_path / "out.json")
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "duty_cycle=0.991"
    record = json.loads(lines[-2].removeprefix("json="))
    assert record["headline"] == {"duty_cycle": 0.991}
    assert json.loads((tmp_path / "out.json").read_text()) == record
