"""bench/engine_speed.py on the CPU with the tiny model, and the full-size random model's shapes:
the scripts a GPU run needs cannot rot without a GPU at hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench.full_size import full_size_components

from bench import engine_speed


def test_the_full_size_model_has_the_real_parameter_counts() -> None:
    import torch

    components = full_size_components("meta", torch.bfloat16)  # shapes only, no memory

    def billions(module: torch.nn.Module) -> float:
        return sum(parameter.numel() for parameter in module.parameters()) / 1e9

    assert billions(components["transformer"]) == pytest.approx(20.4, abs=0.1)
    assert billions(components["text_encoder"]) == pytest.approx(8.29, abs=0.05)  # Qwen2.5-VL-7B
    assert billions(components["vae"]) == pytest.approx(0.127, abs=0.01)


def test_the_script_runs_on_the_cpu_with_the_tiny_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["--tiny", "--steps", "2", "--batch", "2", "--rounds", "1",
                 "--variants", "stock,two_pass,default,attention,fp8", "--json", str(tmp_path / "e.json")]  # fmt: skip
    engine_speed.main(arguments)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("engine_speedup=")
    assert float(lines[-1].split("=")[1]) > 0
    record = json.loads((tmp_path / "e.json").read_text())
    rows = {(row["variant"], row["mode"]): row for row in record["rows"]}
    for variant in ("stock", "two_pass", "default"):
        for mode in ("single", "images", "requests"):
            assert rows[(variant, mode)]["seconds_per_image"] > 0
            assert rows[(variant, mode)]["step_ms"] > 0
    for variant in ("attention", "fp8"):  # nothing of either runs on a CPU
        assert rows[(variant, "single")]["seconds_per_image"] is None
        assert rows[(variant, "single")]["note"].startswith("skipped")


def test_unknown_variants_are_refused() -> None:
    with pytest.raises(SystemExit):
        engine_speed.main(["--tiny", "--variants", "turbo"])
