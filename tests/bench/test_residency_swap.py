"""bench/residency_swap.py on the CPU with the tiny model: every request after the loads swaps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import residency_swap


@pytest.mark.slow
def test_two_models_taking_turns_swap_once_per_request(tmp_path: Path) -> None:
    residency_swap.main(["--tiny", "--steps", "2", "--rounds", "1", "--json", str(tmp_path / "r.json")])
    rows = {row["configuration"]: row for row in json.loads((tmp_path / "r.json").read_text())["rows"]}
    assert rows["resident"]["swaps"] == 0
    for name in ("host", "drop"):
        assert rows[name]["swaps"] == rows[name]["requests"] == 2
        assert rows[name]["swap_seconds"] > 0


def test_full_size_is_refused_with_the_reason() -> None:
    with pytest.raises(SystemExit):
        residency_swap.main([])
