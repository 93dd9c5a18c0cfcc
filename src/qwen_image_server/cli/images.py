"""Commands that make images without a server: generate, edit, tiny-model, models."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from qwen_image_server.cli.main import app, err, friendly_errors, invalid_setting, out
from qwen_image_server.domain import (
    DEFAULT_IMAGE_TO_IMAGE_STRENGTH,
    MODEL_SPECS,
    SIZE_PRESETS,
    Acceleration,
    GenerationRequest,
    ImageResult,
    ModelName,
    OutputFormat,
    StepProgress,
    parse_size,
)
from qwen_image_server.errors import InvalidParameter
from qwen_image_server.safe_fetch import EVERYWHERE, HTTP_URL_PATTERN
from qwen_image_server.settings import Settings

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="A model name (qwen-image, qwen-image-edit, qwen-image-edit-plus) or a checkpoint for the "
        "command's default model: `tiny`, a local diffusers folder, or a Hugging Face repo id.",
    ),
]
CheckpointOpt = Annotated[
    str | None, typer.Option("--checkpoint", help="Checkpoint for the chosen model (overrides settings).")
]
SizeOpt = Annotated[
    str | None,
    typer.Option(
        "--size", "-s", help=f"WIDTHxHEIGHT, 256-2048 per side (any value), or a preset: {', '.join(SIZE_PRESETS)}."
    ),
]
StepsOpt = Annotated[int | None, typer.Option("--steps", help="Denoising steps (default: the model's).")]
CfgOpt = Annotated[
    float | None, typer.Option("--cfg", help="true_cfg_scale; above 1 turns on classifier-free guidance.")
]
NegativeOpt = Annotated[str | None, typer.Option("--negative", help="Negative prompt (what to steer away from).")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed of the first image; image i uses seed+i.")]
CountOpt = Annotated[int, typer.Option("-n", "--count", help="Number of images.")]
FormatOpt = Annotated[
    OutputFormat | None, typer.Option("--format", "-f", help="png, jpeg or webp (default: from -o, else png).")
]
QualityOpt = Annotated[int, typer.Option("--quality", help="JPEG/WebP quality, 1-100.")]
AccelerationOpt = Annotated[
    Acceleration,
    typer.Option(
        "--acceleration",
        help="none, regular (skips transformer blocks at steps that change little; close to none) or high "
        "(the Lightning LoRA of setting lightning_loras, else skips more). See docs/engine.md.",
    ),
]
LoraOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--lora",
        help="A LoRA adapter, SOURCE[:SCALE]: a .safetensors file, a folder holding one, a Hugging Face repo id "
        "(fused into the weights), or an http(s) URL (downloaded into DATA_DIR/lora-cache). Repeat for up to 3.",
    ),
]
OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", help="Output file; with -n > 1, NAME-1.ext, NAME-2.ext, ... (default: qwen-image-SEED.ext)."
    ),
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
DTypeOpt = Annotated[str | None, typer.Option("--dtype", help="auto, float32 or bfloat16 (float16 is refused).")]
OffloadOpt = Annotated[str | None, typer.Option("--offload", help="none, model, sequential or group.")]


def _settings(
    placement: Placement, model: ModelName, checkpoint: str | None, local_loras: tuple[str, ...] = ()
) -> Settings:
    overrides: dict[str, Any] = {"device": placement.device, "dtype": placement.dtype, "offload": placement.offload}
    overrides["allowed_fetch_networks"] = EVERYWHERE  # the machine's own user: as for input images
    if local_loras:
        overrides["loras"] = local_loras
    try:
        settings = Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as exc:
        raise invalid_setting(exc) from None
    return settings if checkpoint is None else settings.with_checkpoint(model, checkpoint)


@dataclass(frozen=True)
class Placement:
    """Where the model runs: the --device, --dtype and --offload flags (None: from settings)."""

    device: str | None
    dtype: str | None
    offload: str | None


@dataclass(frozen=True)
class ImageOptions:
    """The generation flags shared by `generate` and `edit`, as the user gave them."""

    prompt: str
    negative: str | None
    size: str | None
    steps: int | None
    cfg: float | None
    seed: int | None
    count: int
    quality: int
    acceleration: Acceleration = Acceleration.NONE
    strength: float | None = None
    loras: tuple[str, ...] = ()

    @property
    def local_loras(self) -> tuple[str, ...]:
        """The --lora adapters on this machine or the hub, as the server-level setting `loras`
        (`cli-N=source[:scale]`): fused into the weights, as a one-off run wants."""
        return tuple(f"cli-{i}={lora}" for i, lora in enumerate(self.loras, 1) if not _is_url(lora))

    def _url_loras(self) -> list[dict[str, Any]]:
        """The --lora URLs, as a request's adapters (downloaded through the adapter cache)."""
        chosen = []
        for lora in self.loras:
            if _is_url(lora):
                head, colon, tail = lora.rpartition(":")
                scaled = bool(colon) and _is_float(tail) and _is_url(head)
                chosen.append({"path": head, "scale": float(tail)} if scaled else {"path": lora})
        return chosen

    def request(self, model: ModelName, images: tuple[bytes, ...], fmt: OutputFormat) -> GenerationRequest:
        size = parse_size(self.size) if self.size else None
        return GenerationRequest.create(
            model=model,
            prompt=self.prompt,
            negative_prompt=self.negative,
            width=size.width if size else None,
            height=size.height if size else None,
            num_inference_steps=self.steps,
            true_cfg_scale=self.cfg,
            seed=self.seed,
            num_images_per_prompt=self.count,
            output_format=fmt,
            output_quality=self.quality,
            acceleration=self.acceleration,
            loras=self._url_loras(),
            images=images,
            strength=self.strength,
        )


def _is_url(text: str) -> bool:
    return re.match(HTTP_URL_PATTERN, text) is not None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _choose_model(option: str | None, checkpoint: str | None, default: ModelName) -> tuple[ModelName, str | None]:
    """`--model` is a model name, or a checkpoint for the command's default model."""
    if option is None:
        return default, checkpoint
    if option in {name.value for name in ModelName}:
        return ModelName(option), checkpoint
    if checkpoint is not None:
        raise InvalidParameter("--model names a checkpoint and so does --checkpoint; give one of them", param="model")
    return default, option


def _output_paths(output: Path | None, fmt: OutputFormat, seeds: list[int]) -> list[Path]:
    if output is None:
        return [Path(f"qwen-image-{seed}.{fmt.extension}") for seed in seeds]
    if len(seeds) == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i + 1}{output.suffix}") for i in range(len(seeds))]


def _output_format(requested: OutputFormat | None, output: Path | None) -> OutputFormat:
    from_name = OutputFormat.from_extension(output.suffix) if output is not None and output.suffix else None
    if requested is not None and from_name is not None and requested is not from_name:
        raise InvalidParameter(f"--format {requested} does not match the output name {output}", param="format")
    if output is not None and output.suffix and from_name is None:
        raise InvalidParameter(f"cannot tell the image format from {output}; use .png, .jpg or .webp", param="output")
    return requested or from_name or OutputFormat.PNG


def _run(settings: Settings, request: GenerationRequest, output: Path | None) -> None:
    from qwen_image_server.engine import Engine

    paths = _output_paths(output, request.output_format, request.image_seeds)
    engine = Engine(settings)
    checkpoint = settings.checkpoint_for(request.model)
    with err.status(f"loading {request.model} from {checkpoint} ..."):
        engine.load(request.model)
        engine.validate(request)
    if checkpoint == "tiny":
        err.print(
            "note: the tiny model has random weights; its images are noise, made by the real pipeline",
            soft_wrap=True,
        )
    with _step_progress(request.denoising_steps) as on_step:  # the images of a request are made together
        results = engine.generate(request, on_step=on_step, cancel=threading.Event())
    for path, result in zip(paths, results, strict=True):
        _save(path, result)


def _save(path: Path, result: ImageResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(result.data)
    out.print(f"saved {path}  {result.width}x{result.height}  seed {result.seed}", highlight=False)


@contextmanager
def _step_progress(total: int) -> Iterator[Callable[[StepProgress], None]]:
    columns = (TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("steps", total=total)

        def on_step(step: StepProgress) -> None:
            progress.update(task, completed=step.step)

        yield on_step


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What the image should show.")],
    model: ModelOpt = None,
    checkpoint: CheckpointOpt = None,
    size: SizeOpt = None,
    steps: StepsOpt = None,
    cfg: CfgOpt = None,
    negative: NegativeOpt = None,
    seed: SeedOpt = None,
    count: CountOpt = 1,
    output_format: FormatOpt = None,
    quality: QualityOpt = 90,
    acceleration: AccelerationOpt = Acceleration.NONE,
    lora: LoraOpt = None,
    output: OutputOpt = None,
    device: DeviceOpt = None,
    dtype: DTypeOpt = None,
    offload: OffloadOpt = None,
    image: Annotated[
        str | None,
        typer.Option(
            "--image", "-i", help="Image-to-image: start from this image (a path, an http(s) URL or a data URI)."
        ),
    ] = None,
    strength: Annotated[
        float | None,
        typer.Option(
            "--strength",
            help=f"With --image: how far from it to go, above 0 to 1 (default {DEFAULT_IMAGE_TO_IMAGE_STRENGTH}).",
        ),
    ] = None,
) -> None:
    """Generate images from a text prompt, or from a prompt and a starting image (--image)."""
    options = ImageOptions(
        prompt, negative, size, steps, cfg, seed, count, quality, acceleration, strength, tuple(lora or ())
    )
    with friendly_errors():
        name, source = _choose_model(model, checkpoint, ModelName.QWEN_IMAGE)
        refs = [image] if image is not None else []
        _execute(name, source, options, refs, output, output_format, Placement(device, dtype, offload))


@app.command()
def edit(
    prompt: Annotated[str, typer.Argument(help="How to change the image(s).")],
    image: Annotated[
        list[str],
        typer.Option("--image", "-i", help="Input image: a path, an http(s) URL or a data URI. Repeat for up to 3."),
    ],
    model: ModelOpt = None,
    checkpoint: CheckpointOpt = None,
    size: SizeOpt = None,
    steps: StepsOpt = None,
    cfg: CfgOpt = None,
    negative: NegativeOpt = None,
    seed: SeedOpt = None,
    count: CountOpt = 1,
    output_format: FormatOpt = None,
    quality: QualityOpt = 90,
    acceleration: AccelerationOpt = Acceleration.NONE,
    lora: LoraOpt = None,
    output: OutputOpt = None,
    device: DeviceOpt = None,
    dtype: DTypeOpt = None,
    offload: OffloadOpt = None,
) -> None:
    """Edit one image, or combine up to three (qwen-image-edit-plus is chosen for more than one)."""
    options = ImageOptions(
        prompt, negative, size, steps, cfg, seed, count, quality, acceleration, loras=tuple(lora or ())
    )
    with friendly_errors():
        default = ModelName.QWEN_IMAGE_EDIT if len(image) == 1 else ModelName.QWEN_IMAGE_EDIT_PLUS
        name, source = _choose_model(model, checkpoint, default)
        _execute(name, source, options, image, output, output_format, Placement(device, dtype, offload))


def _execute(
    model: ModelName,
    checkpoint: str | None,
    options: ImageOptions,
    image_refs: list[str],
    output: Path | None,
    requested_format: OutputFormat | None,
    placement: Placement,
) -> None:
    from qwen_image_server.sources import read_image_source

    fmt = _output_format(requested_format, output)
    settings = _settings(placement, model, checkpoint, options.local_loras)
    inputs = tuple(read_image_source(ref, index=i) for i, ref in enumerate(image_refs))
    _run(settings, options.request(model, inputs, fmt), output)


@app.command("tiny-model")
def tiny_model(
    folder: Annotated[Path, typer.Argument(help="Folder to write the tiny model to (created).")],
    force: Annotated[bool, typer.Option("--force", help="Write into a folder that is not empty.")] = False,
) -> None:
    """Write the tiny random-weight Qwen-Image as a diffusers folder (for tests and demos; offline)."""
    with friendly_errors():
        if folder.exists() and any(folder.iterdir()) and not force:
            raise InvalidParameter(f"{folder} is not empty; pass --force to write into it anyway", param="folder")
        from qwen_image_server.engine.tiny import save_tiny_model

        folder.mkdir(parents=True, exist_ok=True)
        save_tiny_model(folder)
        out.print(f"wrote the tiny model to {folder}; use it with --model {folder}", highlight=False)


@app.command()
def models() -> None:
    """List the model names, what they do, and the checkpoint each is configured to load."""
    settings = Settings()
    for name, spec in MODEL_SPECS.items():
        out.print(
            f"{name.value:<22} {spec.description:<28} steps {spec.default_steps:<3} "
            f"checkpoint {settings.checkpoint_for(name)}",
            highlight=False,
        )
