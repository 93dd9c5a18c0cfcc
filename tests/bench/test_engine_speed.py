"""bench/engine_speed.py on the CPU with the tiny model, and the full-size random model's shapes:
the scripts a GPU run needs cannot rot without a GPU at hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench.full_size import full_size_components

from bench import engine_speed
from qwen_image_server.settings import Settings


def test_the_full_size_model_has_the_real_parameter_counts() -> None:
    import torch

    components = full_size_components("meta", torch.bfloat16)  # shapes only, no memory

    def billions(module: torch.nn.Module) -> float:
        return sum(parameter.numel() for parameter in module.parameters()) / 1e9

    assert billions(components["transformer"]) == pytest.approx(20.4, abs=0.1)
    assert billions(components["text_encoder"]) == pytest.approx(8.29, abs=0.05)  # Qwen2.5-VL-7B
    assert billions(components["vae"]) == pytest.approx(0.127, abs=0.01)


def test_the_script_runs_on_the_cpu_with_the_tiny_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["--tiny", "--steps", "2", "--batch", "2", "--rounds", "1", "--long-steps", "3",
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
    assert rows[("default", "long")]["steps"] == 3 and rows[("default", "long")]["seconds_per_image"] > 0
    for variant in ("attention", "fp8"):  # nothing of either runs on a CPU
        assert rows[(variant, "single")]["seconds_per_image"] is None
        assert rows[(variant, "single")]["note"].startswith("skipped")
    assert "fp8 needs a CUDA GPU" in rows[("fp8", "single")]["note"]  # the engine's own refusal
    printed = [line.split()[1:3] for line in lines if line.startswith("row ")]
    assert len(printed) == len(record["rows"]) and ["default", "single@3"] in printed


def test_each_row_is_printed_and_written_as_it_finishes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stopped before the end (a time limit on the GPU) still leaves its rows."""

    def stopped(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(engine_speed, "report", stopped)
    with pytest.raises(KeyboardInterrupt):
        engine_speed.main(["--tiny", "--steps", "2", "--batch", "2", "--rounds", "1", "--variants", "two_pass,default",
                           "--json", str(tmp_path / "e.json")])  # fmt: skip
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("row ")]
    assert [line.split()[1:3] for line in printed] == [[variant, mode] for variant in ("two_pass", "default")
                                                       for mode in ("single", "images", "requests")]  # fmt: skip
    record = json.loads((tmp_path / "e.json").read_text())
    assert record["partial"] is True and len(record["rows"]) == 6
    assert all(row["seconds_per_image"] > 0 for row in record["rows"])


@pytest.mark.slow
def test_the_options_are_set_through_the_engines_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`compile` is an engine built with compile=true: the engine's `_activate` compiles its
    transformer (stubbed here: compiling on 2 CPU cores takes minutes)."""
    from qwen_image_server.engine import speedups

    compiled: list[object] = []
    activated: list[bool] = []
    apply_speedups = speedups.apply_speedups

    def applied(transformer: object, settings: Settings, device: object) -> None:
        activated.append(settings.compile)
        apply_speedups(transformer, settings, device)

    monkeypatch.setattr(speedups, "compile_blocks", compiled.append)
    monkeypatch.setattr(speedups, "apply_speedups", applied)
    monkeypatch.setattr(speedups, "_check_compile", lambda device: None)
    engine_speed.main(["--tiny", "--steps", "2", "--batch", "2", "--rounds", "1", "--variants", "default,compile"])
    assert activated == [False, True]  # the default engine, then one built with compile=true
    assert len(compiled) == 1  # its transformer, compiled by the engine's `_activate`
    compile_rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("row compile")]
    assert len(compile_rows) == 3 and all("compile_repeated_blocks" in line for line in compile_rows)


def test_unknown_variants_are_refused() -> None:
    with pytest.raises(SystemExit):
        engine_speed.main(["--tiny", "--variants", "turbo"])
