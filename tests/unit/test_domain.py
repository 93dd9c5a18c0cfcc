from __future__ import annotations

import pytest

from qwen_image_server.domain import (
    DEFAULT_SIZE,
    MODEL_SPECS,
    SEED_MAX,
    SIZE_PRESETS,
    GenerationRequest,
    ModelName,
    OutputFormat,
    PipelineMode,
    Size,
    generation_size,
    parse_size,
    size_for_aspect,
)
from qwen_image_server.errors import InvalidImage, InvalidParameter
from qwen_image_server.provenance.finishing import Finishing
from qwen_image_server.settings import Settings
from tests.conftest import picture_bytes


def make(**fields: object) -> GenerationRequest:
    base: dict[str, object] = {"model": "qwen-image", "prompt": "a red fox"}
    base.update(fields)
    return GenerationRequest.create(**base)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1024x768", Size(1024, 768)),
        ("1024*768", Size(1024, 768)),
        (" 512 X 512 ", Size(512, 512)),
        ("16:9", Size(1664, 928)),
    ],
)
def test_parse_size_accepts_both_separators_and_presets(text: str, expected: Size) -> None:
    assert parse_size(text) == expected


def test_parse_size_rejects_garbage_naming_the_presets() -> None:
    with pytest.raises(InvalidParameter, match="16:9") as caught:
        parse_size("big")
    assert caught.value.param == "size"


def test_every_preset_is_a_valid_size() -> None:
    for size in SIZE_PRESETS.values():
        request = make(width=size.width, height=size.height)
        assert (request.width, request.height) == (size.width, size.height)


def test_defaults_come_from_the_model() -> None:
    request = make(model="qwen-image-edit-plus", images=(picture_bytes((300, 300)),))
    spec = MODEL_SPECS[ModelName.QWEN_IMAGE_EDIT_PLUS]
    assert request.num_inference_steps == spec.default_steps == 40
    assert request.true_cfg_scale == 4.0
    assert make().num_inference_steps == 50
    assert (make().width, make().height) == (DEFAULT_SIZE.width, DEFAULT_SIZE.height)


def test_a_missing_seed_is_drawn_once_and_kept() -> None:
    seeds = {make().seed for _ in range(5)}
    assert len(seeds) > 1
    assert all(0 <= seed <= SEED_MAX for seed in seeds)


def test_each_image_gets_its_own_seed_wrapping_at_the_maximum() -> None:
    assert make(seed=7, num_images_per_prompt=3).image_seeds == [7, 8, 9]
    assert make(seed=SEED_MAX, num_images_per_prompt=2).image_seeds == [SEED_MAX, 0]


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"width": 100, "height": 100}, "width", "between 256 and 2048"),
        ({"width": 255, "height": 512}, "width", "between 256 and 2048"),
        ({"width": 512, "height": 2049}, "height", "between 256 and 2048"),
        ({"width": 512}, "size", "both width and height"),
        ({"num_inference_steps": 0}, "num_inference_steps", "at least 2"),
        ({"num_inference_steps": 1}, "num_inference_steps", "at least 2"),
        ({"num_inference_steps": 251}, "num_inference_steps", "at most 250"),
        ({"true_cfg_scale": 21}, "true_cfg_scale", "at most 20"),
        ({"seed": -1}, "seed", "at least 0"),
        ({"seed": 2**31}, "seed", "at most"),
        ({"num_images_per_prompt": 11}, "num_images_per_prompt", "at most 10"),
        ({"prompt": "   "}, "prompt", "empty"),
        ({"model": "dall-e"}, "model", "unknown model"),
        ({"output_format": "gif"}, "output_format", "png"),
        ({"output_quality": 0}, "output_quality", "at least 1"),
        ({"max_sequence_length": 2048}, "max_sequence_length", "at most 1024"),
        ({"colour": "red"}, "colour", "not a known parameter"),
        ({"images": (picture_bytes(),) * 2}, "images", "at most one input image"),
        ({"strength": 0.5}, "strength", "give qwen-image one input image"),
        ({"strength": 0, "images": (picture_bytes(),)}, "strength", "more than 0"),
        ({"strength": 1.5, "images": (picture_bytes(),)}, "strength", "at most 1"),
        ({"strength": 1e-20, "images": (picture_bytes(),)}, "strength", "raise strength or num_inference_steps"),
        ({"model": "qwen-image-edit", "images": (picture_bytes(),), "strength": 0.5}, "strength", "leave it out"),
    ],
)
def test_bad_requests_fail_with_the_parameter_named(fields: dict[str, object], param: str, words: str) -> None:
    with pytest.raises(InvalidParameter, match=words) as caught:
        make(**fields)
    assert caught.value.param == param
    assert caught.value.status == 400


def test_edit_models_check_the_number_of_images() -> None:
    one = picture_bytes()
    with pytest.raises(InvalidParameter, match="takes 1 input image"):
        make(model="qwen-image-edit")
    with pytest.raises(InvalidParameter, match="1 to 3 input image"):
        make(model="qwen-image-edit-plus", images=(one,) * 4)
    assert len(make(model="qwen-image-edit-plus", images=(one,) * 3).images) == 3


def test_an_undecodable_input_image_is_named_by_position() -> None:
    with pytest.raises(InvalidImage) as caught:
        make(model="qwen-image-edit-plus", images=(picture_bytes(), b"not an image"))
    assert caught.value.param == "images[1]"
    assert "input image 2" in caught.value.message


def test_edit_without_size_keeps_the_last_inputs_aspect_at_about_one_megapixel() -> None:
    wide = picture_bytes((1600, 900))
    request = make(model="qwen-image-edit", images=(wide,))
    assert request.width % 16 == 0 and request.height % 16 == 0
    assert abs(request.width / request.height - 16 / 9) < 0.02
    assert 0.9e6 < request.width * request.height < 1.1e6


def test_size_for_aspect_stays_in_bounds_for_extreme_ratios() -> None:
    size = size_for_aspect(8000, 40)
    assert size.width == 2048 and size.height == 256


@pytest.mark.parametrize(("width", "height"), [(1000, 1000), (257, 2047), (256, 2048), (1337, 999)])
def test_any_size_in_the_models_range_is_kept_as_asked(width: int, height: int) -> None:
    # Providers such as Novita accept any side in their range; the engine makes such sizes exactly.
    request = make(width=width, height=height)
    assert (request.width, request.height) == (width, height)
    assert GenerationRequest.from_stored_json(request.to_stored_json()) == request


@pytest.mark.parametrize(
    ("asked", "multiple", "made"),
    [
        (Size(1000, 1000), 16, Size(1008, 1008)),
        (Size(1024, 768), 16, Size(1024, 768)),  # on the grid: generated as asked, nothing cropped
        (Size(257, 2047), 16, Size(272, 2048)),
        (Size(2048, 256), 16, Size(2048, 256)),
        (Size(1001, 999), 8, Size(1008, 1000)),
    ],
)
def test_generation_size_rounds_each_side_up_to_the_models_multiple(asked: Size, multiple: int, made: Size) -> None:
    assert generation_size(asked.width, asked.height, multiple) == made


def test_the_generation_size_of_any_valid_side_stays_in_range() -> None:
    for side in range(256, 2049):
        generated = generation_size(side, side).width
        assert side <= generated <= 2048 and generated % 16 == 0 and generated - side < 16


def test_a_request_stored_before_free_sizes_still_loads() -> None:
    # A task row written by an earlier release (schema version 1, sides on the 16-pixel grid).
    stored = (
        '{"schema_version":1,"model":"qwen-image","prompt":"a fox","negative_prompt":null,"width":1024,'
        '"height":768,"num_inference_steps":50,"true_cfg_scale":4.0,"guidance_scale":null,"seed":5,'
        '"num_images_per_prompt":1,"output_format":"png","output_quality":90,"max_sequence_length":512,'
        '"images":[],"mask":null,"partial_images":0}'
    )
    request = GenerationRequest.from_stored_json(stored)
    assert (request.width, request.height, request.seed) == (1024, 768, 5)


def test_requests_round_trip_through_json_with_their_schema_version() -> None:
    request = make(model="qwen-image-edit", images=(picture_bytes(),), seed=3, output_format="webp")
    text = request.model_dump_json()
    assert '"schema_version":1' in text
    again = GenerationRequest.model_validate_json(text)
    assert again == request
    assert again.output_format is OutputFormat.WEBP


def test_a_request_stored_before_the_notes_of_acceptance_loads_without_them() -> None:
    stored = make(seed=5).to_stored_json().replace(',"not_applied":[]', "")
    assert "not_applied" not in stored
    assert GenerationRequest.from_stored_json(stored).not_applied == ()


def test_the_notes_of_acceptance_round_trip_and_change_no_picture() -> None:
    """A dialect's notes (a header not applied...) are no part of what is made: the batch key and the
    invisible mark's recipe stay those of the same request without them; the schema version stays 1."""
    request = make(seed=5)
    noted = request.with_not_applied({"X-Fal-Runner-Hint": "no runners here", "loras.0.force": "applied anyway"})
    assert noted.not_applied == (("X-Fal-Runner-Hint", "no runners here"), ("loras.0.force", "applied anyway"))
    assert noted.batch_key == request.batch_key is not None
    finisher = Finishing(Settings(c2pa=False), str)
    assert finisher.payload(noted, 5) == finisher.payload(request, 5)
    again = GenerationRequest.from_stored_json(noted.to_stored_json())
    assert again == noted and again.schema_version == 1
    assert noted.with_not_applied({"loras.0.force": "other"}) == noted, "an option is noted once"
    assert request.with_not_applied({}) is request


def test_requests_are_immutable() -> None:
    request = make()
    with pytest.raises(Exception, match="frozen"):
        request.prompt = "other"  # type: ignore[misc]


def test_cfg_is_on_only_above_one() -> None:
    assert make(true_cfg_scale=4.0).uses_cfg
    assert not make(true_cfg_scale=1.0).uses_cfg


def test_requests_that_can_share_a_call_have_one_batch_key() -> None:
    def key(**fields: object) -> str | None:
        base: dict[str, object] = {"model": "qwen-image", "prompt": "a fox", "width": 1024, "height": 1024,
                                   "num_inference_steps": 20, "seed": 1}  # fmt: skip
        return GenerationRequest.create(**{**base, **fields}).batch_key

    shared = key()
    assert shared is not None
    # Another prompt, seed, count, CFG scale, format, or a size on the same 16-pixel grid: same call.
    assert key(prompt="a city", negative_prompt="fog", seed=9, num_images_per_prompt=3, true_cfg_scale=2.0,
               output_format="jpeg", width=1020) == shared  # fmt: skip
    # Another grid, step count, CFG on or off, or input images: another call.
    assert key(width=1040) != shared
    assert key(num_inference_steps=30) != shared
    assert key(true_cfg_scale=1.0) != shared
    assert key(images=(picture_bytes(),), mask=picture_bytes()) is None
    assert key(images=(picture_bytes(),)) is None  # image-to-image
    assert key(model="qwen-image-edit", images=(picture_bytes(),)) is None


def test_qwen_image_with_one_image_and_no_mask_is_image_to_image_at_diffusers_default_strength() -> None:
    request = make(images=(picture_bytes(),), num_inference_steps=10)
    assert request.pipeline_mode is PipelineMode.IMAGE_TO_IMAGE
    assert request.strength == 0.6
    assert make(images=(picture_bytes(),), strength=0.25).strength == 0.25


def test_inpainting_keeps_full_strength_by_default_and_honours_a_given_one() -> None:
    mask = picture_bytes()
    assert make(images=(picture_bytes(),), mask=mask).pipeline_mode is PipelineMode.INPAINT
    assert make(images=(picture_bytes(),), mask=mask).strength == 1.0
    assert make(images=(picture_bytes(),), mask=mask, strength=0.5).strength == 0.5


def test_requests_without_a_starting_image_have_no_strength() -> None:
    assert make().pipeline_mode is PipelineMode.STANDARD and make().strength is None
    edit = make(model="qwen-image-edit", images=(picture_bytes(),))
    assert edit.pipeline_mode is PipelineMode.STANDARD and edit.strength is None


@pytest.mark.parametrize(
    ("steps", "strength", "run"),
    [(10, None, 10), (10, 1.0, 10), (10, 0.6, 6), (4, 0.6, 3), (50, 0.3, 15), (2, 0.1, 1), (3, 0.5, 2)],
)
def test_denoising_steps_are_those_the_stock_pipelines_run(steps: int, strength: float | None, run: int) -> None:
    images = (picture_bytes(),) if strength is not None else ()
    request = make(num_inference_steps=steps, strength=strength, images=images)
    assert request.denoising_steps == run


def test_previews_are_spread_over_the_steps_that_run() -> None:
    request = make(images=(picture_bytes(),), num_inference_steps=10, strength=0.6, partial_images=2)
    assert request.denoising_steps == 6
    assert request.partial_steps() == [2, 4]


def test_a_stored_inpainting_request_from_before_strength_loads_at_full_strength() -> None:
    stored = make(images=(picture_bytes(),), mask=picture_bytes()).to_stored_json()
    old = stored.replace(',"strength":1.0', "")
    assert '"strength"' not in old
    assert GenerationRequest.from_stored_json(old).strength == 1.0
    again = make(images=(picture_bytes(),), strength=0.3).to_stored_json()
    assert GenerationRequest.from_stored_json(again).strength == 0.3
