"""The GPU benchmarks run where the server's own dependencies are not installed: the device machine
has python3 with torch, transformers, accelerate and peft, and gets diffusers, torchao, pydantic and
a few more as wheels (`make gpu-wheels`), nothing else. Each script is run here in a process where the
packages that machine lacks cannot be imported, so a stray import fails here, not on the GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# On the server's dependency list, neither on the GPU machine nor among gpu-wheels/.
ABSENT_THERE = ("pywt", "c2pa", "cryptography", "sqlalchemy", "alembic", "aiosqlite", "fastapi", "uvicorn",
                "sse_starlette", "multipart", "redis", "boto3", "asyncpg")  # fmt: skip

BLOCKED_RUN = """
import importlib.abc, runpy, sys
absent = set(sys.argv[1].split(","))
class Absent(importlib.abc.MetaPathFinder):
    # Every finder behind one that finds nothing for the absent packages: imports of them fail and
    # importlib.util.find_spec answers None, as where they are not installed.
    def __init__(self, finders):
        self.finders = finders
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in absent:
            return None
        for finder in self.finders:
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                return spec
        return None
    def find_distributions(self, *args, **kwargs):
        for finder in self.finders:
            if hasattr(finder, "find_distributions"):
                yield from finder.find_distributions(*args, **kwargs)
    def invalidate_caches(self):
        for finder in self.finders:
            if hasattr(finder, "invalidate_caches"):
                finder.invalidate_caches()
sys.meta_path[:] = [Absent(list(sys.meta_path))]
script, sys.argv = sys.argv[2], sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


def run_without_absent_packages(script: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", BLOCKED_RUN, ",".join(ABSENT_THERE), script, *arguments]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "arguments", "headline"),
    [
        ("bench/engine_speed.py", "--steps 2 --batch 2 --rounds 1 --variants default", "engine_speedup="),
        ("bench/acceleration.py", "--steps 8 --rounds 1 --lightning --lightning-steps 4", "acceleration_speedup="),
        ("bench/lora_switching.py", "--steps 2 --rounds 1", "lora_switch_ms="),
    ],
)
def test_the_gpu_benches_run_without_the_packages_the_gpu_machine_lacks(
    script: str, arguments: str, headline: str
) -> None:
    done = run_without_absent_packages(script, "--tiny", *arguments.split())
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1].startswith(headline)


def test_the_blocker_blocks(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text("import pywt\n")
    done = run_without_absent_packages(str(script))
    assert done.returncode != 0
    assert "No module named 'pywt'" in done.stderr
