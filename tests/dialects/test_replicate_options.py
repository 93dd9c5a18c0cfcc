"""Replicate's `lora_weights` and `lora_scale` through the official `replicate` client against a live
server with the tiny model that offers an adapter (`request_loras`) and downloads adapters from
loopback (`allowed_fetch_networks`): by name, by URL, and refusals naming `input.lora_weights`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import replicate
from replicate.exceptions import ReplicateError

from tests.conftest import LiveServer
from tests.dialects.test_fal_options import offering
from tests.dialects.test_replicate import FAST, official_client

KEY = "replicate-test-key"  # an open server takes any key


@pytest.fixture(scope="module")
def server(lora_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with offering(lora_file, tmp_path_factory.mktemp("replicate-options") / "data") as live:
        yield live


@pytest.fixture
def client(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[replicate.Client]:
    monkeypatch.setenv("REPLICATE_POLL_INTERVAL", "0.05")
    with official_client(server, KEY) as polling_fast:
        yield polling_fast


def stored_loras(server: LiveServer, prediction_id: str) -> Any:
    answer = httpx.get(f"{server.url}/v1/tasks/{prediction_id}", headers={"Authorization": f"Bearer {KEY}"})
    return answer.json()["request"]["loras"]


@pytest.mark.parametrize("by", ["name", "url"])
def test_lora_weights_and_scale_run_and_are_echoed(
    client: replicate.Client, server: LiveServer, files: str, by: str
) -> None:
    weights = "style" if by == "name" else f"{files}/style.safetensors"
    inputs = {"prompt": "a fox", "lora_weights": weights, "lora_scale": 0.6, **FAST}
    prediction = client.predictions.create(model="qwen/qwen-image", input=inputs)
    prediction.wait()
    assert prediction.status == "succeeded", prediction.error
    assert prediction.input is not None
    assert (prediction.input["lora_weights"], prediction.input["lora_scale"]) == (weights, 0.6)
    [lora] = stored_loras(server, prediction.id)
    assert (lora["name"] or lora["path"], lora["scale"]) == (weights, 0.6)


def test_an_adapter_not_offered_is_refused_naming_lora_weights(client: replicate.Client) -> None:
    with pytest.raises(ReplicateError) as refused:
        client.predictions.create(model="qwen/qwen-image", input={"prompt": "a fox", "lora_weights": "nope"})
    error = refused.value
    assert error.status == 422 and error.detail is not None
    assert error.detail.startswith("input.lora_weights:") and "not offered" in error.detail


def test_the_invalid_field_is_input_lora_weights(server: LiveServer) -> None:
    answer = httpx.post(
        f"{server.url}/v1/models/qwen/qwen-image/predictions",
        json={"input": {"prompt": "a fox", "lora_weights": "nope"}},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert answer.status_code == 422
    assert [field["field"] for field in answer.json()["invalid_fields"]] == ["input.lora_weights"]
