"""bench/gpu_step.py on the CPU with a 2-block model: the same code that times the full model on a
GPU, so the script cannot rot without a GPU at hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench.gpu_step import FULL, TINY, image_tokens, step_flops

from bench import gpu_step


def test_the_flop_count_of_the_full_model_matches_the_design_figures() -> None:
    # DESIGN.md: about 141 TFLOP per CFG step at 1024x1024 and 263 TFLOP at 1328x1328.
    assert step_flops(FULL, 1024, 1024) / 1e12 == pytest.approx(141, rel=0.01)
    assert step_flops(FULL, 1328, 1328) / 1e12 == pytest.approx(263, rel=0.01)
    assert image_tokens(1024, 1024) == 64 * 64 and image_tokens(1328, 1328) == 83 * 83
    assert FULL.hidden == 3072


def test_the_full_shape_builds_a_model_of_20_billion_parameters() -> None:
    import torch

    model = gpu_step.build_transformer(FULL, "meta", torch.bfloat16)  # no memory: shapes only
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(20.4, abs=0.1)


def test_the_script_runs_on_the_cpu_with_the_tiny_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["--tiny", "--sizes", "32,64", "--variants", "sequential,batched,attention,fp8",
                 "--warmup", "1", "--iters", "2", "--json", str(tmp_path / "gpu.json")]  # fmt: skip
    gpu_step.main(arguments)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("gpu_step_tflops=")
    record = json.loads((tmp_path / "gpu.json").read_text())
    assert record["cfg_batched_relative_difference"] < 1e-5, "CFG batched must make the same step as 2 calls"
    rows = {(row["variant"], row["size"]): row for row in record["rows"]}
    assert set(rows) == {(v, s) for v in ("sequential", "batched", "attention", "fp8") for s in (32, 64)}
    for variant in ("sequential", "batched", "attention"):
        row = rows[(variant, 64)]
        assert row["ms"] > 0 and row["tflops"] > 0
        assert row["tflop"] == pytest.approx(step_flops(TINY, 64, 64) / 1e12, rel=1e-3)
    assert rows[("fp8", 64)]["ms"] is None and rows[("fp8", 64)]["note"].startswith("skipped")
    assert "attention backend" in rows[("attention", 64)]["note"]


def test_unknown_variants_and_sizes_are_refused() -> None:
    with pytest.raises(SystemExit):
        gpu_step.main(["--tiny", "--variants", "turbo"])
    with pytest.raises(SystemExit):
        gpu_step.main(["--tiny", "--sizes", "100"])
