"""The duty-cycle arithmetic of bench/duty_cycle.py, on a timeline made by hand."""

from __future__ import annotations

import pytest
from bench.duty_cycle import Timeline, analyse


def test_duty_cycle_and_the_parts_of_each_gap() -> None:
    timeline = Timeline()
    # Three tasks: the pipeline runs 1 s; render returns 10 ms after it; the worker takes 20 ms,
    # then 2 ms pass in the next render before its pipeline starts: 32 ms gaps. Each image takes
    # 15 ms to encode, overlapped with the next pipeline.
    start = 0.0
    for _ in range(3):
        timeline.render.append((start, start + 1.012))
        timeline.pipeline.append((start + 0.002, start + 1.002))
        timeline.encode.append((start + 1.013, start + 1.028))
        start += 1.032
    result = analyse([timeline])
    assert result.gaps_ms.median == pytest.approx(32)
    assert result.after_ms.median == pytest.approx(10)
    assert result.encode_ms.n == 3 and result.encode_ms.median == pytest.approx(15)
    assert result.worker_ms.median == pytest.approx(20)
    assert result.prepare_ms.median == pytest.approx(2)
    assert result.duty == pytest.approx(3.0 / 3.064)
    assert result.tasks_per_s == pytest.approx(1 / 1.032)


def test_runs_pool_their_gaps_but_not_the_time_between_runs() -> None:
    first = Timeline(pipeline=[(0.0, 1.0), (1.1, 2.1)], render=[(0.0, 1.0), (1.1, 2.1)], encode=[(1.0, 1.01)])
    second = Timeline(
        pipeline=[(100.0, 101.0), (101.3, 102.3)], render=[(100.0, 101.0), (101.3, 102.3)], encode=[(101, 101.03)]
    )
    result = analyse([first, second])
    assert result.gaps_ms.n == 2 and result.gaps_ms.max == pytest.approx(300)
    assert result.duty == pytest.approx(4.0 / (2.1 + 2.3))
    assert result.encode_ms.n == 2 and result.encode_ms.max == pytest.approx(30)


def test_a_timeline_with_one_task_has_no_gap_to_measure() -> None:
    timeline = Timeline(pipeline=[(0.0, 1.0)], render=[(0.0, 1.0)])
    with pytest.raises(RuntimeError):
        analyse([timeline])
