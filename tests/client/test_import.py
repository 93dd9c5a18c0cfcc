"""The client is for applications: importing it must not load the server's dependencies."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "diffusers", "transformers", "fastapi", "starlette", "sqlalchemy", "pydantic", "PIL", "numpy")


def test_importing_the_client_loads_no_server_dependency() -> None:
    script = (
        "import json, sys\n"
        "from qwen_image_server.client import AsyncClient, Client\n"
        "ours = [m for m in sys.modules if m.startswith('qwen_image_server.')\n"
        "        and not m.startswith('qwen_image_server.client')]\n"
        f"print(json.dumps({{'heavy': [m for m in {HEAVY!r} if m in sys.modules], 'ours': ours}}))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    loaded = json.loads(run.stdout)
    assert loaded == {"heavy": [], "ours": []}, loaded
