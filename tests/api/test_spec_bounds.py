"""The OpenAPI spec says what validation does: the native create body declares the domain's bounds,
so a value the spec allows is accepted and one just past a bound is refused (`invalid_parameter`);
the URL, size, prompt, model and image fields of the provider dialects declare patterns that admit
only what their validators accept (strings drawn from each pattern are all accepted)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen_image_server import domain
from qwen_image_server.api.dashscope import translate as dashscope_translate
from qwen_image_server.api.novita.translate import novita_size
from qwen_image_server.api.openai import translate as openai_translate
from qwen_image_server.api.wire import int_range_pattern
from qwen_image_server.safe_fetch import check_url
from qwen_image_server.sources import read_remote_image
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


# -- the dialects' patterns admit only what validation accepts ----------------------------------------
# Strings are drawn from each pattern as the spec states it, and handed to the check that validation
# runs on that field: every one must pass (a fuzzer's valid request must not get a 400).

DRAWS = settings(max_examples=60, database=None, deadline=None, derandomize=True)


def drawn_from(pattern: str, check: Callable[[str], object]) -> None:
    # The spec's patterns are ECMA regexes, where `$` is the very end; Python's also matches before
    # a final newline, so read `$` as `\Z` (none of these patterns has a `$` in a character class).
    @DRAWS
    @given(st.from_regex(pattern.replace("$", r"\Z")))
    def each(text: str) -> None:
        check(text)

    each()


def request_schema(spec: dict[str, Any], path: str, media: str = "application/json") -> dict[str, Any]:
    schema: dict[str, Any] = spec["paths"][path]["post"]["requestBody"]["content"][media]["schema"]
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def component(spec: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = spec["components"]["schemas"][name]
    return found


def field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """A property's schema for its non-null values (keywords beside `anyOf` apply to them too)."""
    found: dict[str, Any] = schema["properties"][name]
    branch = next((option for option in found.get("anyOf", [found]) if option.get("type") != "null"), found)
    return {**{key: value for key, value in found.items() if key != "anyOf"}, **branch}


def a_sized_request(text: str) -> None:
    size = domain.parse_size(text)
    domain.check_side("width", size.width)
    domain.check_side("height", size.height)


def a_prompt(text: str) -> None:
    assert text.strip(), "a prompt of only spaces is refused"


def check_callback(url: str) -> None:
    check_url(url)
    parts = urlsplit(url)  # what the Novita, kie and Replicate validators check
    assert parts.scheme.lower() in ("http", "https") and parts.netloc
    _ = parts.port  # raises ValueError on a port urlsplit cannot read, as in the validators


def url_fields(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    fal_query = spec["paths"]["/fal-ai/qwen-image"]["post"]["parameters"]
    return {
        "native callback_url": field(request_schema(spec, "/v1/tasks"), "callback_url"),
        "kie callBackUrl": field(request_schema(spec, "/api/v1/jobs/createTask"), "callBackUrl"),
        "novita webhook": component(spec, "Webhook")["properties"]["url"],
        "replicate webhook": field(request_schema(spec, "/v1/predictions"), "webhook"),
        "replicate webhook_completed": field(request_schema(spec, "/v1/predictions"), "webhook_completed"),
        "fal fal_webhook": field({"properties": {p["name"]: p["schema"] for p in fal_query}}, "fal_webhook"),
    }


async def test_callback_urls_in_the_spec_are_all_fetchable(spec: dict[str, Any]) -> None:
    for name, schema in url_fields(spec).items():
        assert "pattern" in schema, name
        drawn_from(schema["pattern"], check_callback)


async def test_sizes_in_the_spec_are_all_in_range(spec: dict[str, Any]) -> None:
    native = field(request_schema(spec, "/v1/tasks"), "size")["pattern"]
    drawn_from(native, a_sized_request)
    openai = field(request_schema(spec, "/v1/images/generations"), "size")["pattern"]
    drawn_from(openai, lambda text: text == "auto" or a_sized_request(text))
    novita = field(request_schema(spec, "/v3/async/qwen-image-txt2img"), "size")["pattern"]
    drawn_from(novita, novita_size)
    for refused in ("0x0", "255x256", "2049*1024"):
        assert not re.search(native, refused), refused
    assert not re.search(novita, "1537*1024") and not re.search(novita, "16:9")


async def test_prompts_in_the_spec_have_something_in_them(spec: dict[str, Any]) -> None:
    prompts = {
        "native": field(request_schema(spec, "/v1/tasks"), "prompt"),
        "openai": field(request_schema(spec, "/v1/images/generations"), "prompt"),
        "novita": field(request_schema(spec, "/v3/async/qwen-image-txt2img"), "prompt"),
        "novita edit": field(request_schema(spec, "/v3/async/qwen-image-edit"), "prompt"),
        "pixwith": field(request_schema(spec, "/api/task/create"), "prompt"),
        "kie": field(component(spec, "KieInput"), "prompt"),
        "replicate": field(component(spec, "PredictionInput"), "prompt"),
    }
    for name, schema in prompts.items():
        assert schema.get("minLength", 0) >= 1 or schema.get("pattern"), name
        drawn_from(schema["pattern"], a_prompt)


async def test_openai_model_names_in_the_spec_are_all_served(spec: dict[str, Any]) -> None:
    generations = field(request_schema(spec, "/v1/images/generations"), "model")["pattern"]
    drawn_from(generations, openai_translate.generation_model)
    edits = field(request_schema(spec, "/v1/images/edits", "multipart/form-data"), "model")["pattern"]
    drawn_from(edits, lambda name: openai_translate.edit_model(name, 1, False, tuple(domain.ModelName)))
    assert re.search(generations, "gpt-image-2") and not re.search(generations, "qwen-image-edit")
    assert not re.search(edits, "stable-diffusion")


@pytest.mark.parametrize(
    ("path", "schema_name"),
    [
        ("/api/v1/services/aigc/multimodal-generation/generation", "MultimodalBody"),
        ("/qwen-image/v1/generateMultimodeTextToImageRequest", "MultimodalBody"),
        ("/api/v1/services/aigc/text2image/image-synthesis", "SynthesisBody"),
    ],
)
async def test_dashscope_models_are_required_and_named(spec: dict[str, Any], path: str, schema_name: str) -> None:
    schema = request_schema(spec, path)
    assert schema is component(spec, schema_name) or schema == component(spec, schema_name)
    assert {"model", "input"} <= set(schema["required"])
    drawn_from(field(schema, "model")["pattern"], lambda name: dashscope_translate.resolve_model(name, 0))
    assert re.search(field(schema, "model")["pattern"], "qwen-image-edit-plus-2025-10-30")


async def test_native_image_references_in_the_spec_are_all_read(spec: dict[str, Any]) -> None:
    items = field(request_schema(spec, "/v1/tasks"), "images")["items"]

    def read(ref: str) -> None:
        if not ref.lower().startswith("http"):  # URLs are fetched when the task is created
            read_remote_image(ref)

    drawn_from(items["pattern"], read)
    for refused in ("", "data:text/plain;base64,AAAA", "not base64!", "ftp://host/x.png"):
        assert not re.search(items["pattern"], refused), refused


def test_int_range_patterns_match_exactly_the_range() -> None:
    for low, high in [(0, 9), (1, 100), (256, 1536), (256, 2048), (17, 983), (99, 101)]:
        pattern = re.compile(rf"^{int_range_pattern(low, high)}$")
        wrong = [n for n in range(2 * high + 20) if bool(pattern.match(str(n))) != (low <= n <= high)]
        assert not wrong, (low, high, wrong[:5])
        assert pattern.match(f"0{high}")  # int() reads leading zeros
