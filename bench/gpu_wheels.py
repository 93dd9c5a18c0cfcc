"""Checks gpu-wheels/ (`make gpu-wheels`) before it is carried to the GPU machine: every requirement of
every wheel, as CPython 3.12 on x86_64 Linux reads its markers, is met by another wheel there (at a
version it accepts) or by a package that machine's image has. Exits 1 naming what is missing.

    .venv/bin/python bench/gpu_wheels.py gpu-wheels
"""

from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# The packages of the GPU machine's image that the wheels rely on (its python3 is CPython 3.12.3 with
# torch 2.11); versions there are the image's, not checked here.
ON_THE_MACHINE = frozenset({"accelerate", "filelock", "fsspec", "httpx", "huggingface-hub", "numpy", "packaging",
                            "peft", "pillow", "psutil", "pyyaml", "regex", "requests", "safetensors", "tokenizers",
                            "torch", "tqdm", "transformers"})  # fmt: skip
THERE = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
         "platform_machine": "x86_64", "platform_system": "Linux", "implementation_name": "cpython",
         "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}  # fmt: skip


def read_wheels(folder: Path) -> dict[str, tuple[str, list[Requirement]]]:
    """Each wheel's name: its version and its requirements."""
    wheels = {}
    for path in sorted(folder.glob("*.whl")):
        with zipfile.ZipFile(path) as wheel:
            [metadata] = [name for name in wheel.namelist() if name.endswith(".dist-info/METADATA")]
            text = wheel.read(metadata).decode()
        name = canonicalize_name(_field(text, "Name"))
        requires = [
            Requirement(line.split(": ", 1)[1]) for line in text.splitlines() if line.startswith("Requires-Dist: ")
        ]
        wheels[name] = (_field(text, "Version"), requires)
    return wheels


def unmet(wheels: dict[str, tuple[str, list[Requirement]]]) -> list[str]:
    problems = []
    for name, (version, requires) in sorted(wheels.items()):
        for requirement in requires:
            if requirement.marker is not None and not requirement.marker.evaluate(THERE):
                continue
            wanted = canonicalize_name(requirement.name)
            if wanted in wheels:
                if not requirement.specifier.contains(wheels[wanted][0], prereleases=True):
                    problems.append(f"{name} {version} needs {requirement}; the wheel is {wheels[wanted][0]}")
            elif wanted not in ON_THE_MACHINE:
                problems.append(f"{name} {version} needs {requirement}: neither a wheel nor on the machine")
    return problems


def _field(metadata: str, key: str) -> str:
    found = re.search(rf"^{key}: (.*)$", metadata, re.MULTILINE)
    if found is None:
        raise ValueError(f"a wheel's METADATA has no {key}")
    return found.group(1).strip()


def main(argv: list[str] | None = None) -> int:
    folder = Path((argv if argv is not None else sys.argv[1:] or ["gpu-wheels"])[0])
    wheels = read_wheels(folder)
    if not wheels:
        print(f"no wheels in {folder}/")
        return 1
    problems = unmet(wheels)
    for problem in problems:
        print(problem)
    print(f"{len(wheels)} wheels, {len(problems)} unmet requirements")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
