"""The OpenAPI spec says what validation does: the native create body declares the domain's bounds,
so a value the spec allows is accepted and one just past a bound is refused (`invalid_parameter`);
the URL and model fields of the provider dialects document the patterns their validators check."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from qwen_image_server import domain
from tests.api.conftest import TINY_TASK

pytestmark = pytest.mark.anyio

# field: (the lowest value allowed, the highest)
NATIVE_BOUNDS: dict[str, tuple[float, float]] = {
    "num_inference_steps": (domain.MIN_STEPS, domain.MAX_STEPS),
    "true_cfg_scale": (0.0, domain.MAX_CFG),
    "seed": (0, domain.SEED_MAX),
    "n": (1, domain.MAX_IMAGES_PER_REQUEST),
    "output_quality": (1, 100),
    "max_sequence_length": (1, domain.MAX_SEQUENCE_LENGTH_CAP),
    "partial_images": (0, domain.MAX_PARTIAL_IMAGES),
    "width": (domain.MIN_SIDE, domain.MAX_SIDE),
}


@pytest.fixture
async def spec(api: httpx.AsyncClient) -> dict[str, Any]:
    found: dict[str, Any] = (await api.get("/openapi.json")).json()
    return found


def body_schema(spec: dict[str, Any], path: str) -> dict[str, Any]:
    ref = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema: dict[str, Any] = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return schema


def bounds_in_spec(field: dict[str, Any]) -> tuple[float, float]:
    branch = next((option for option in field.get("anyOf", [field]) if "minimum" in option), field)
    return branch["minimum"], branch["maximum"]


@pytest.mark.parametrize("name", sorted(NATIVE_BOUNDS))
async def test_native_bounds_are_in_the_spec_and_hold(api: httpx.AsyncClient, spec: dict[str, Any], name: str) -> None:
    client = api
    low, high = NATIVE_BOUNDS[name]
    assert bounds_in_spec(body_schema(spec, "/v1/tasks")["properties"][name]) == (low, high)
    step = 1 if isinstance(low, int) else 0.5
    extra = {"height": 256} if name == "width" else {}
    base = {key: value for key, value in TINY_TASK.items() if not (name == "width" and key == "size")}
    for value in (low, high):
        answer = await client.post("/v1/tasks", json={**base, **extra, name: value})
        assert answer.status_code == 202, f"{name}={value}: {answer.text}"
    for value in (low - step, high + step):
        answer = await client.post("/v1/tasks", json={**base, **extra, name: value})
        assert answer.status_code == 400, f"{name}={value}: {answer.text}"
        assert answer.json()["error"] == {"code": "invalid_parameter", "message": answer.json()["error"]["message"],
                                          "param": name}  # fmt: skip


async def test_native_enums_and_patterns_are_in_the_spec(spec: dict[str, Any]) -> None:
    fields = body_schema(spec, "/v1/tasks")["properties"]
    models = spec["components"]["schemas"]["ModelName"]["enum"]
    assert models == [model.value for model in domain.ModelName]
    assert spec["components"]["schemas"]["OutputFormat"]["enum"] == ["png", "jpeg", "webp"]
    size = re.compile(fields["size"]["pattern"])
    for text in ("1024x1024", "1000*1000", "16:9", " 512 X 768 "):
        assert size.match(text) and domain.parse_size(text)
    assert not size.match("big")
    assert fields["images"]["maxItems"] == domain.MAX_INPUT_IMAGES
    strength = next(option for option in fields["strength"]["anyOf"] if "maximum" in option)
    assert (strength["exclusiveMinimum"], strength["maximum"]) == (0.0, 1.0)
    assert "Default 0.6" in fields["strength"]["description"]


@pytest.mark.parametrize(
    ("path", "field"),
    [("/v1/tasks", ["callback_url"]), ("/api/v1/jobs/createTask", ["callBackUrl"])],
)
async def test_callback_url_patterns_match_what_is_refused(spec: dict[str, Any], path: str, field: list[str]) -> None:
    pattern = re.compile(body_schema(spec, path)["properties"][field[0]]["pattern"])
    assert pattern.match("https://hooks.example/x?y=1") and pattern.match("HTTP://hooks.example")
    for refused in ("ftp://hooks.example/x", "hooks.example/x", "http://", "https:///path"):
        assert not pattern.match(refused), refused
