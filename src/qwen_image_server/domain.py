"""The internal vocabulary that crosses every boundary: models, sizes, requests, results.

`GenerationRequest` is the one request shape that every API dialect and the CLI translate into, and
that the engine executes. It validates itself on construction (everything that needs no model
weights; the prompt's token count is checked by the engine, which owns the tokenizer), so a bad
request fails before any work. Field names follow the diffusers `__call__` arguments.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from qwen_image_server import images
from qwen_image_server.errors import InvalidParameter
from qwen_image_server.report import NO_NOTES, ImageNote, RequestNotes
from qwen_image_server.safe_fetch import HTTP_URL_PATTERN

REQUEST_SCHEMA_VERSION = 1

SEED_MAX = 2**31 - 1
# The Qwen-Image models generate sides in multiples of 16 (the VAE's 8x down-sampling times the
# transformer's 2x2 patches); other sizes are made at the next multiple up and cropped.
SIZE_MULTIPLE = 16
MIN_SIDE = 256
MAX_SIDE = 2048
# One step is not allowed: the Qwen-Image scheduler's terminal shift divides 0 by 0 at one step and
# the image comes out NaN (black). kie.ai's API has the same lower bound.
MIN_STEPS = 2
MAX_STEPS = 250
MAX_CFG = 20.0
MAX_IMAGES_PER_REQUEST = 10
MAX_INPUT_IMAGES = 3  # the most any model takes (qwen-image-edit-plus)
MAX_SEQUENCE_LENGTH_CAP = 1024  # the pipelines refuse more
MAX_PARTIAL_IMAGES = 3
# diffusers' edit-inpaint pipeline ignores the asked size (it always works at ~1 MP), so masks go
# through QwenImageInpaintPipeline, with the text-to-image weights.
MASKABLE_MODELS = frozenset({"qwen-image"})
# How far image-to-image goes from its input: diffusers' `QwenImageImg2ImgPipeline` default. Inpainting
# keeps full strength by default (the masked area is made anew from the prompt), as it always has.
DEFAULT_IMAGE_TO_IMAGE_STRENGTH = 0.6
DEFAULT_INPAINT_STRENGTH = 1.0
LORA_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAX_REQUEST_LORAS = 3  # fal's limit on `loras`
MAX_LORA_SCALE = 4.0  # fal's range is 0-4; negative scales (slider adapters) mirror it
MAX_PROMPT_CHARS = 20_000  # a cheap guard before the tokenizer measures the real limit
EDIT_TARGET_AREA = 1024 * 1024  # an edit with no size keeps the input's aspect ratio at ~1 MP
_TRUSTED = "trusted"  # validation context: the request was validated before it was stored


class ModelName(StrEnum):
    QWEN_IMAGE = "qwen-image"
    QWEN_IMAGE_EDIT = "qwen-image-edit"
    QWEN_IMAGE_EDIT_PLUS = "qwen-image-edit-plus"


@dataclass(frozen=True)
class ModelSpec:
    """What a request needs to know of a model: its inputs and its recommended settings."""

    name: ModelName
    min_input_images: int
    max_input_images: int
    default_steps: int
    default_true_cfg_scale: float
    description: str

    @property
    def is_edit(self) -> bool:
        """An edit model needs an input image; qwen-image takes one only to start from (image-to-image)."""
        return self.min_input_images > 0


MODEL_SPECS: dict[ModelName, ModelSpec] = {
    ModelName.QWEN_IMAGE: ModelSpec(
        ModelName.QWEN_IMAGE, 0, 1, 50, 4.0, "text-to-image; image-to-image or inpainting from one input image"
    ),
    ModelName.QWEN_IMAGE_EDIT: ModelSpec(ModelName.QWEN_IMAGE_EDIT, 1, 1, 50, 4.0, "edit one image"),
    ModelName.QWEN_IMAGE_EDIT_PLUS: ModelSpec(
        ModelName.QWEN_IMAGE_EDIT_PLUS, 1, 3, 40, 4.0, "edit or combine 1-3 images"
    ),
}


class Acceleration(StrEnum):
    """How much speed a request trades for fidelity (kie's `acceleration`; docs/engine.md says what
    each level runs)."""

    NONE = "none"
    REGULAR = "regular"
    HIGH = "high"


class PipelineMode(StrEnum):
    """Which pipeline of a model a request runs; `GenerationRequest.pipeline_mode` decides it."""

    STANDARD = "standard"  # the model's own: text-to-image for qwen-image, the edit for the edit models
    IMAGE_TO_IMAGE = "image_to_image"  # qwen-image from one input image, `strength` of the way
    INPAINT = "inpaint"  # qwen-image repainting the masked area of one input image


class LoraChoice(BaseModel):
    """One adapter a request asks for: a `name` the server offers (setting `request_loras`) or a
    `path`, the http(s) URL of a .safetensors file (downloaded by the worker, setting
    `lora_downloads`), at `scale` (None: the offered adapter's configured scale, or 1)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = Field(default=None, pattern=LORA_NAME_PATTERN)
    path: str | None = Field(default=None, max_length=2048, pattern=HTTP_URL_PATTERN)
    scale: float | None = Field(default=None, ge=-MAX_LORA_SCALE, le=MAX_LORA_SCALE)

    @model_validator(mode="after")
    def _name_or_path(self) -> Self:
        if (self.name is None) == (self.path is None):
            raise ValueError("give exactly one of `name` (an adapter this server offers) or `path` (a URL)")
        return self

    @property
    def source(self) -> str:
        """What identifies the adapter: its offered name, or its URL."""
        return self.name if self.name is not None else str(self.path)


class OutputFormat(StrEnum):
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"

    @property
    def content_type(self) -> str:
        return f"image/{self.value}"

    @property
    def extension(self) -> str:
        return "jpg" if self is OutputFormat.JPEG else self.value

    @classmethod
    def from_extension(cls, suffix: str) -> OutputFormat | None:
        suffix = suffix.lower().lstrip(".")
        return {"png": cls.PNG, "jpg": cls.JPEG, "jpeg": cls.JPEG, "webp": cls.WEBP}.get(suffix)


@dataclass(frozen=True)
class Size:
    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


# The sizes Qwen-Image was trained for, by aspect ratio (width:height).
SIZE_PRESETS: dict[str, Size] = {
    "1:1": Size(1328, 1328),
    "16:9": Size(1664, 928),
    "9:16": Size(928, 1664),
    "4:3": Size(1472, 1104),
    "3:4": Size(1104, 1472),
    "3:2": Size(1584, 1056),
    "2:3": Size(1056, 1584),
}
DEFAULT_SIZE = SIZE_PRESETS["1:1"]

_SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*[xX*×]\s*(\d+)\s*$")
# What `parse_size` reads, for wire schemas (so the OpenAPI spec says it): WxH, W*H or a preset.
SIZE_TEXT_PATTERN = r"^\s*(\d+\s*[xX*×]\s*\d+|" + "|".join(SIZE_PRESETS) + r")\s*$"


def parse_size(text: str) -> Size:
    """`1024x768`, `1024*768` (DashScope's form) or a preset name such as `16:9`."""
    preset = SIZE_PRESETS.get(text.strip())
    if preset is not None:
        return preset
    match = _SIZE_PATTERN.match(text)
    if match is None:
        presets = ", ".join(SIZE_PRESETS)
        raise InvalidParameter(
            f"size {text!r} is not WIDTHxHEIGHT (e.g. 1024x1024) or a preset ({presets})", param="size"
        )
    return Size(int(match.group(1)), int(match.group(2)))


def check_side(name: str, value: int) -> None:
    """Any side in the model's range: the engine generates at the next multiple of the model's grid
    and crops the centre back to this size (`generation_size`)."""
    if not MIN_SIDE <= value <= MAX_SIDE:
        raise InvalidParameter(f"{name} must be between {MIN_SIDE} and {MAX_SIDE} pixels, got {value}", param=name)


def generation_size(width: int, height: int, multiple: int = SIZE_MULTIPLE) -> Size:
    """The size a model whose sides must be multiples of `multiple` generates at to deliver
    `width` x `height`: each side rounded up, so that the asked size is a centre crop of it (a few
    pixels lost at the edges, none stretched). MAX_SIDE is on the grid, so this stays in range."""

    def round_up(side: int) -> int:
        return -(-side // multiple) * multiple

    return Size(round_up(width), round_up(height))


def size_for_aspect(width: int, height: int, area: int = EDIT_TARGET_AREA) -> Size:
    """A valid size of about `area` pixels with the aspect ratio of `width` x `height`."""
    ratio = width / height
    out_w = math.sqrt(area * ratio)
    out_h = out_w / ratio

    def fit(side: float) -> int:
        snapped = round(side / SIZE_MULTIPLE) * SIZE_MULTIPLE
        return min(MAX_SIDE, max(MIN_SIDE, snapped))

    return Size(fit(out_w), fit(out_h))


def size_keeping_input(image: bytes) -> Size:
    """For APIs whose edits take no size: the input's own size, scaled down to about 1 MP when
    larger and up to a 256-pixel short side when smaller, on the 16-pixel grid."""
    width, height = images.inspect_input_image(image, index=0)
    scale = min(1.0, math.sqrt(EDIT_TARGET_AREA / (width * height)))
    scale = max(scale, MIN_SIDE / min(width, height))
    return size_for_aspect(width, height, area=round(width * scale * height * scale))


def random_seed() -> int:
    return secrets.randbelow(SEED_MAX + 1)


class GenerationRequest(BaseModel):
    """One request to generate or edit images; immutable, validated, JSON-serialisable.

    Build it with `GenerationRequest.create(...)`, which fills the model's recommended defaults and
    turns every validation failure into an `InvalidParameter` naming the offending field.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    schema_version: int = REQUEST_SCHEMA_VERSION
    model: ModelName
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    width: int
    height: int
    num_inference_steps: int = Field(ge=MIN_STEPS, le=MAX_STEPS)
    true_cfg_scale: float = Field(ge=0.0, le=MAX_CFG)
    guidance_scale: float | None = Field(default=None, ge=0.0, le=MAX_CFG)
    seed: int = Field(ge=0, le=SEED_MAX)
    num_images_per_prompt: int = Field(default=1, ge=1, le=MAX_IMAGES_PER_REQUEST)
    output_format: OutputFormat = OutputFormat.PNG
    output_quality: int = Field(default=90, ge=1, le=100)
    max_sequence_length: int = Field(default=512, ge=1, le=MAX_SEQUENCE_LENGTH_CAP)
    images: tuple[bytes, ...] = ()
    # Inpainting: white pixels of the mask are repainted, black ones kept (diffusers' convention).
    # Takes exactly one input image, with qwen-image.
    mask: bytes | None = None
    # Previews decoded from intermediate steps, per image, evenly spread over the denoising.
    partial_images: int = Field(default=0, ge=0, le=MAX_PARTIAL_IMAGES)
    acceleration: Acceleration = Acceleration.NONE
    # LoRA adapters for this request only, applied with their scales on top of the server's own.
    loras: tuple[LoraChoice, ...] = Field(default=(), max_length=MAX_REQUEST_LORAS)
    # Options around the model (docs/provenance.md): a visible watermark on the images; the prompt
    # rewritten by the language model first; the images checked by the safety checker.
    watermark: bool = False
    prompt_extend: bool = False
    prompt_translate: bool = False  # into English first (Pixwith's prompt_optimization)
    safety_check: bool = False
    # Image-to-image and inpainting (qwen-image with one input image): how far from the input image
    # the result may go (1: all the way, a new picture); the denoising starts that far in, so only
    # about strength x num_inference_steps steps run (`denoising_steps`). Filled with the default of
    # the mode (0.6 image-to-image, 1.0 inpainting); None for the other requests, which refuse it.
    strength: float | None = Field(default=None, gt=0.0, le=1.0)
    # How many input images, and whether a mask, the request has. Filled from `images` and `mask`, and
    # kept when their bytes are held apart: the task store keeps them out of the task row
    # (`without_inputs`), so a request read back for a poll or a list carries only these counts.
    input_image_count: int = Field(default=0, ge=0)
    has_mask: bool = False
    # What the dialect accepted and will not apply, known when it translated the request (a header
    # that means nothing here, fal's `loras[].force`...): (option, why). Stored with the task so that
    # the result, every poll and the webhook say it as the create answer did (docs/provenance.md); the
    # engine starts the task's report from it. Not a picture's recipe: no part of `batch_key`, nor of
    # the invisible mark's recipe (provenance/finishing.py). A request stored before it loads with ().
    not_applied: tuple[tuple[str, str], ...] = ()

    @classmethod
    def create(cls, **fields: Any) -> Self:
        """Validate `fields` into a request; raise `InvalidParameter` with a message a person can act on."""
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise _invalid_parameter(exc) from None

    @classmethod
    def from_stored_json(cls, text: str | bytes) -> Self:
        """Load a request that was validated before it was stored: types are checked again, but the
        input images are not decoded again (that would cost a decode per image per task read)."""
        return cls.model_validate_json(text, context={_TRUSTED: True})

    def to_stored_json(self) -> str:
        """The request without its input images (the task store keeps them apart)."""
        return self.model_dump_json(exclude={"images", "mask"})

    def with_not_applied(self, notes: Mapping[str, str] | None) -> Self:
        """This request with the dialect's notes of acceptance added (option -> why)."""
        known = dict(self.not_applied)
        fresh = tuple((option, why) for option, why in (notes or {}).items() if option not in known)
        return self.model_copy(update={"not_applied": self.not_applied + fresh}) if fresh else self

    def without_inputs(self) -> Self:
        """This request without the bytes of its input images and mask (their counts stay)."""
        return self.model_copy(update={"images": (), "mask": None})

    def with_inputs(self, images: tuple[bytes, ...], mask: bytes | None) -> Self:
        """This request with the bytes of its input images and mask put back."""
        if len(images) != self.input_image_count or (mask is not None) != self.has_mask:
            raise ValueError(f"the request has {self.input_image_count} input images, got {len(images)}")
        return self.model_copy(update={"images": images, "mask": mask})

    @property
    def has_inputs_attached(self) -> bool:
        """False for a request read from the task store whose input images are held apart."""
        return len(self.images) == self.input_image_count and (self.mask is not None) == self.has_mask

    @property
    def spec(self) -> ModelSpec:
        return MODEL_SPECS[self.model]

    @property
    def image_seeds(self) -> list[int]:
        """The seed of each output image: image i alone, with seed `image_seeds[i]`, reproduces it."""
        return [(self.seed + index) % (SEED_MAX + 1) for index in range(self.num_images_per_prompt)]

    @property
    def pipeline_mode(self) -> PipelineMode:
        if self.has_mask:
            return PipelineMode.INPAINT
        if self.model is ModelName.QWEN_IMAGE and self.input_image_count:
            return PipelineMode.IMAGE_TO_IMAGE
        return PipelineMode.STANDARD

    @property
    def denoising_steps(self) -> int:
        """The steps that really run: with a `strength` s the stock pipelines skip the first
        (1 - s) x num_inference_steps of the schedule; this is their arithmetic (`get_timesteps`)."""
        steps = self.num_inference_steps
        if self.strength is None:
            return steps
        skipped = int(max(steps - min(steps * self.strength, steps), 0))
        return steps - skipped

    def partial_steps(self) -> list[int]:
        """The 1-based steps (of each image) after which a preview is decoded, evenly spread over
        the steps that run."""
        steps, count = self.denoising_steps, self.partial_images
        return sorted({max(1, round(steps * (i + 1) / (count + 1))) for i in range(count)})

    @property
    def uses_cfg(self) -> bool:
        return self.true_cfg_scale > 1.0

    @property
    def batch_key(self) -> str | None:
        """Requests with the same key can share one pipeline call; None: this one runs alone.

        The engine's text-to-image loop takes rows of different prompts, negative prompts, seeds,
        image counts and CFG scales in one call, as long as the latent grid and the timesteps are the
        same (size on the model's grid, step count) and CFG is on for all or for none. Requests with
        input images or a mask run the stock edit and inpaint pipelines, one request per call.
        """
        if self.model is not ModelName.QWEN_IMAGE or self.input_image_count or self.has_mask:
            return None
        size = generation_size(self.width, self.height)
        cfg = "cfg" if self.uses_cfg else "nocfg"
        key = f"{self.model.value}:{size}:{self.num_inference_steps}:{cfg}:{self.guidance_scale}:{self.acceleration}"
        return f"{key}:{self.lora_key}" if self.loras else key

    @property
    def lora_key(self) -> str:
        """A short digest of the adapters and scales asked for: requests with other adapter sets are
        never batched together (one set of adapters is active per call)."""
        chosen = json.dumps([[lora.source, lora.scale] for lora in self.loras])
        return hashlib.sha256(chosen.encode()).hexdigest()[:16]

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "model" not in data:
            return data
        try:
            spec = MODEL_SPECS[ModelName(data["model"])]
        except ValueError:
            names = ", ".join(name.value for name in ModelName)
            raise InvalidParameter(f"unknown model {data['model']!r}; choose one of {names}", param="model") from None
        data = {key: value for key, value in data.items() if value is not None or key == "negative_prompt"}
        if data.get("images"):
            data["input_image_count"] = len(data["images"])
        if data.get("mask") is not None:
            data["has_mask"] = True
        if spec.name is ModelName.QWEN_IMAGE and data.get("input_image_count") and "strength" not in data:
            data["strength"] = DEFAULT_INPAINT_STRENGTH if data.get("has_mask") else DEFAULT_IMAGE_TO_IMAGE_STRENGTH
        data.setdefault("num_inference_steps", spec.default_steps)
        data.setdefault("true_cfg_scale", spec.default_true_cfg_scale)
        if "seed" not in data:
            data["seed"] = random_seed()
        if "width" not in data and "height" not in data:
            size = _default_size(spec, data.get("images") or ())
            data["width"], data["height"] = size.width, size.height
        elif "width" not in data or "height" not in data:
            raise InvalidParameter("give both width and height, or neither", param="size")
        return data

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, prompt: str) -> str:
        if not prompt.strip():
            raise InvalidParameter("the prompt is empty; describe the image you want", param="prompt")
        return prompt

    @field_validator("width", "height")
    @classmethod
    def _valid_side(cls, value: int, info: ValidationInfo) -> int:
        check_side(str(info.field_name), value)
        return value

    @field_validator("images")
    @classmethod
    def _decodable_images(cls, value: tuple[bytes, ...], info: ValidationInfo) -> tuple[bytes, ...]:
        if info.context and info.context.get(_TRUSTED):
            return value
        for index, data in enumerate(value):
            images.inspect_input_image(data, index=index)
        return value

    @field_validator("mask")
    @classmethod
    def _decodable_mask(cls, value: bytes | None, info: ValidationInfo) -> bytes | None:
        if value is not None and not (info.context and info.context.get(_TRUSTED)):
            images.inspect_input_image(value, index=0, param="mask")
        return value

    @field_validator("loras")
    @classmethod
    def _distinct_loras(cls, value: tuple[LoraChoice, ...]) -> tuple[LoraChoice, ...]:
        sources = [lora.source for lora in value]
        repeated = sorted({source for source in sources if sources.count(source) > 1})
        if repeated:
            raise ValueError(f"each adapter at most once; repeated: {', '.join(repeated)}")
        return value

    @model_validator(mode="after")
    def _image_count_fits_model(self) -> Self:
        spec = self.spec
        count = self.input_image_count
        if self.has_mask:
            if self.model.value not in MASKABLE_MODELS or count != 1:
                raise InvalidParameter(
                    "a mask takes exactly one input image, with the qwen-image model (inpainting)", param="mask"
                )
            return self
        if spec.min_input_images <= count <= spec.max_input_images:
            return self
        if not spec.is_edit:
            hint = "use qwen-image-edit-plus to edit or combine 2-3 images"
            raise InvalidParameter(
                f"{spec.name} takes at most one input image (image-to-image), got {count}; {hint}", param="images"
            )
        allowed = (
            str(spec.max_input_images)
            if spec.min_input_images == spec.max_input_images
            else f"{spec.min_input_images} to {spec.max_input_images}"
        )
        raise InvalidParameter(f"{spec.name} takes {allowed} input image(s), got {count}", param="images")

    @model_validator(mode="after")
    def _strength_fits_mode(self) -> Self:
        if self.strength is None:
            return self
        if self.pipeline_mode is PipelineMode.STANDARD:
            if self.spec.is_edit:
                raise InvalidParameter(
                    f"strength is not used by {self.model}, which always edits from the whole input image; "
                    "leave it out, or use qwen-image with one input image for image-to-image",
                    param="strength",
                )
            raise InvalidParameter(
                "strength is for image-to-image: give qwen-image one input image (images) to start from, "
                "or leave strength out",
                param="strength",
            )
        if self.denoising_steps < 1:
            raise InvalidParameter(
                f"strength {self.strength} of {self.num_inference_steps} steps leaves no step to run; "
                "raise strength or num_inference_steps",
                param="strength",
            )
        return self


def _default_size(spec: ModelSpec, inputs: tuple[bytes, ...] | list[bytes]) -> Size:
    if not inputs:
        return DEFAULT_SIZE
    # Like DashScope: the output keeps the aspect ratio of the last input image, at about 1 MP.
    width, height = images.inspect_input_image(inputs[-1], index=len(inputs) - 1)
    return size_for_aspect(width, height)


_BOUND_WORDS = {
    "greater_than_equal": ("ge", "at least"),
    "less_than_equal": ("le", "at most"),
    "greater_than": ("gt", "more than"),
}
# What a pattern of this module asks for, in words (pydantic's message shows the regex).
_PATTERN_WORDS = {
    HTTP_URL_PATTERN: "must be an http(s) URL",
    LORA_NAME_PATTERN: "must be 1-64 letters, digits, `_` or `-`",
}


def _invalid_parameter(exc: ValidationError) -> InvalidParameter:
    first = exc.errors()[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    message = str(first["msg"]).removeprefix("Value error, ")
    kind = first["type"]
    if kind in _BOUND_WORDS:
        key, words = _BOUND_WORDS[kind]
        message = f"must be {words} {first['ctx'][key]}, got {first['input']}"
    elif kind == "string_pattern_mismatch":
        message = f"{_PATTERN_WORDS.get(first['ctx']['pattern'], message)}, got {first['input']!r}"
    elif kind == "too_long" and "max_length" in first.get("ctx", {}):
        message = f"takes at most {first['ctx']['max_length']}, got {first['ctx'].get('actual_length')}"
    elif kind == "extra_forbidden":
        message = "is not a known parameter"
    elif kind == "missing":
        message = "is required"
    return InvalidParameter(f"{param} {message}" if param else message, param=param)


@dataclass(frozen=True)
class ImageResult:
    """One encoded output image and the seed that reproduces it alone."""

    data: bytes
    output_format: OutputFormat
    width: int
    height: int
    seed: int
    index: int
    partial_index: int | None = None  # set on previews decoded from intermediate steps
    notes: RequestNotes = NO_NOTES  # what happened to the request (the same for its images)
    nsfw: bool | None = None  # the safety checker's verdict; None: not checked
    withheld: str | None = None  # why this image is kept back (then `data` is empty)
    nsfw_score: float | None = None

    @property
    def note(self) -> ImageNote:
        return ImageNote(self.index, self.seed, self.nsfw, self.withheld, self.nsfw_score)

    @property
    def content_type(self) -> str:
        return self.output_format.content_type


class RenderedImage(Protocol):
    """An output image made but not yet encoded: the engine hands these back so that encoding runs
    outside the engine, overlapped with the next generation."""

    def encode(self) -> ImageResult: ...


@dataclass(frozen=True)
class BatchEntry:
    """One request in an engine call that may run several requests together (`Engine.render_batch`):
    its own progress, previews and cancel flag; a cancel stops this request's rows only."""

    request: GenerationRequest
    on_step: Callable[[StepProgress], None] | None = None
    on_partial: Callable[[ImageResult], None] | None = None
    cancel: threading.Event | None = None


@dataclass(frozen=True)
class StepProgress:
    """Progress over a whole request: `step` of `total` denoising steps, across all its images."""

    step: int
    total: int
    image_index: int

    @property
    def percent(self) -> float:
        return 100.0 * self.step / self.total if self.total else 100.0
