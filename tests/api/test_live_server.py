from __future__ import annotations

import httpx

from tests.conftest import LiveServer


def test_the_live_server_answers_over_real_http(live_server: LiveServer) -> None:
    task = {"model": "qwen-image", "prompt": "fox", "size": "256x256", "num_inference_steps": 2, "seed": 1}
    done = httpx.post(f"{live_server.url}/v1/tasks?wait=60", json=task, timeout=90).json()
    assert done["status"] == "succeeded"
    assert done["results"][0]["url"].startswith(live_server.url)
    assert httpx.get(done["results"][0]["url"], timeout=10).content.startswith(b"\x89PNG")
