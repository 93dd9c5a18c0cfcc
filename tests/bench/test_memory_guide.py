"""bench/memory_guide.py: the memory guide's sizes come from the model, its tables from the inputs."""

from __future__ import annotations

import pytest

from bench import memory_guide


def test_the_sizes_are_the_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert memory_guide.main([]) == pytest.approx(141.2, abs=0.1)  # TFLOP per CFG step at 1024x1024
    out = capsys.readouterr().out
    assert "| transformer | 40.86 | 38.05 |" in out
    assert "| transformer_fp8_default | 25.02 |" in out
    assert "| pinned_group_transformer | 64.58 |" in out  # each weight's allocation rounded up to 2^k
    assert "| pinned_arena_transformer | 42.95 |" in out  # 1 GiB chunks (evict_to=host)
    assert "| 80 GB (H100, Gen5) | 1 | defaults | 12.8 |" in out
