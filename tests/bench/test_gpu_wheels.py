"""bench/gpu_wheels.py: a wheel set whose requirements the GPU machine cannot meet is refused."""

from __future__ import annotations

import zipfile
from pathlib import Path

from bench import gpu_wheels


def wheel(folder: Path, name: str, version: str, *requires: str) -> None:
    metadata = f"Name: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {line}\n" for line in requires)
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as archive:
        archive.writestr(f"{name}-{version}.dist-info/METADATA", metadata)


def test_requirements_met_by_wheels_or_the_machine_pass(tmp_path: Path) -> None:
    wheel(tmp_path, "pydantic", "2.14.4", "pydantic-core==2.50.5", "typing-extensions>=4.16")
    wheel(tmp_path, "pydantic_core", "2.50.5", "typing-extensions>=4.16")
    wheel(tmp_path, "typing_extensions", "4.16.0")
    wheel(tmp_path, "diffusers", "0.42.1", "numpy", "huggingface-hub<3.0,>=1.32.0", 'pytest; extra == "test"')
    assert gpu_wheels.main([str(tmp_path)]) == 0


def test_a_missing_or_mismatched_requirement_is_named(tmp_path: Path) -> None:
    wheel(tmp_path, "importlib_metadata", "10.2.0", 'lazy-importer>=0.1; python_version < "3.15"', "zipp>=3.20")
    wheel(tmp_path, "zipp", "3.1.0")
    wheel(tmp_path, "old", "1.0", 'tomli; python_version < "3.11"')  # not for 3.12: ignored
    assert gpu_wheels.main([str(tmp_path)]) == 1
    problems = gpu_wheels.unmet(gpu_wheels.read_wheels(tmp_path))
    assert len(problems) == 2
    assert problems[0].startswith("importlib-metadata 10.2.0 needs lazy-importer>=0.1")
    assert problems[0].endswith("neither a wheel nor on the machine")
    assert problems[1] == "importlib-metadata 10.2.0 needs zipp>=3.20; the wheel is 3.1.0"
