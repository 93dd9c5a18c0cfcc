"""From a checkpoint reference to a ready diffusers pipeline.

A checkpoint is `tiny` (built in memory), a local folder in the diffusers layout, or a Hugging Face
repo id (resolved to a local snapshot first, so everything loads from a folder by one code path).
Components are pooled: the text encoder and VAE are the same for every Qwen-Image model and are
loaded once and shared; a checkpoint used by several model names loads its transformer once.

Loading goes straight to the GPU when nothing is offloaded (`direct_load_device`): diffusers'
`device_map` makes each component's weights land on the device as they are read, instead of
passing the whole model (~58 GB for Qwen-Image in bf16) through host memory first. The offload
modes and the CPU load to host memory, as diffusers does by default.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DiffusionPipeline,
    QwenImageEditPipeline,
    QwenImageEditPlusPipeline,
    QwenImageImg2ImgPipeline,
    QwenImageInpaintPipeline,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)

from qwen_image_server.domain import ModelName, PipelineMode
from qwen_image_server.engine.hub import names_a_repo
from qwen_image_server.engine.loras import ServerLoras
from qwen_image_server.engine.processor import load_processor
from qwen_image_server.engine.tiny import TINY_CHECKPOINT, build_tiny_components, build_tiny_transformer
from qwen_image_server.errors import CheckpointUnavailable
from qwen_image_server.settings import Offload, Quantization

PIPELINE_CLASSES: dict[ModelName, type[DiffusionPipeline]] = {
    ModelName.QWEN_IMAGE: QwenImagePipeline,
    ModelName.QWEN_IMAGE_EDIT: QwenImageEditPipeline,
    ModelName.QWEN_IMAGE_EDIT_PLUS: QwenImageEditPlusPipeline,
}
# Image-to-image and inpainting run the text-to-image weights through these pipelines.
MODE_PIPELINE_CLASSES: dict[tuple[ModelName, PipelineMode], type[DiffusionPipeline]] = {
    (ModelName.QWEN_IMAGE, PipelineMode.IMAGE_TO_IMAGE): QwenImageImg2ImgPipeline,
    (ModelName.QWEN_IMAGE, PipelineMode.INPAINT): QwenImageInpaintPipeline,
}
SHARED_COMPONENTS = ("text_encoder", "vae")


@dataclass(frozen=True)
class Checkpoint:
    """Where weights come from. `folder` is set for local folders and resolved hub snapshots."""

    ref: str
    folder: Path | None

    @property
    def is_tiny(self) -> bool:
        return self.ref == TINY_CHECKPOINT

    def describe(self) -> str:
        if self.is_tiny:
            return "tiny (built in memory, random weights: its images are noise)"
        return f"{self.ref} ({self.folder})" if self.folder and str(self.folder) != self.ref else str(self.folder)


def resolve_checkpoint(ref: str) -> Checkpoint:
    """Find the checkpoint `ref` names, downloading a hub snapshot only when a repo id is given."""
    if ref == TINY_CHECKPOINT:
        return Checkpoint(ref, None)
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise CheckpointUnavailable(f"{path} is not a diffusers checkpoint folder (no model_index.json)")
        return Checkpoint(ref, path.resolve())
    if not names_a_repo(ref):
        raise CheckpointUnavailable(f"no checkpoint folder at {path}; pass an existing folder, a repo id or `tiny`")
    return Checkpoint(ref, _hub_snapshot(ref))


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id))
    except Exception as exc:  # the hub client raises many unrelated types for "not reachable"
        raise CheckpointUnavailable(
            f"could not get {repo_id} from the Hugging Face hub or its local cache ({type(exc).__name__}); "
            "download it first, or pass a local folder or `tiny`"
        ) from exc


def direct_load_device(
    device: torch.device, offload: Offload, quantization: Quantization = "none"
) -> torch.device | None:
    """The device weights load straight onto, or None to load into host memory (as diffusers does by
    default). Only without offload on CUDA: the offload modes want the weights in host memory, and
    on the CPU there is nothing to skip. Under FP8 the transformer is quantized layer by layer on
    its way to the GPU (speedups.quantize_weights), so it loads into host memory first."""
    if offload == "none" and quantization == "none" and device.type == "cuda":
        return device
    return None


class ComponentPool:
    """Loads each component once; hands out pipelines built from shared components.

    `load_to` is where checkpoint folders load their weights (None: host memory); the tiny model is
    built in memory and moved later by the engine. Every transformer it loads, first or again, gets
    the server's LoRA adapters (`loras`) here, before the engine quantizes or compiles it."""

    def __init__(
        self,
        dtype: torch.dtype,
        *,
        share_components: bool,
        load_to: torch.device | None = None,
        loras: ServerLoras | None = None,
    ) -> None:
        self._dtype = dtype
        self._loras = loras or ServerLoras(())
        self._share = share_components
        self._load_to = load_to
        self._shared: dict[str, Any] = {}
        self._by_checkpoint: dict[str, dict[str, Any]] = {}

    def pipeline(
        self, model: ModelName, checkpoint: Checkpoint, mode: PipelineMode = PipelineMode.STANDARD
    ) -> DiffusionPipeline:
        components = self._components(model, checkpoint)
        pipeline_class = pipeline_class_for(model, mode)
        wanted = _component_names(pipeline_class)
        missing = wanted - components.keys()
        if missing:
            raise CheckpointUnavailable(
                f"{checkpoint.ref} cannot serve {model}: it has no {', '.join(sorted(missing))}"
            )
        pipeline = pipeline_class(**{name: components[name] for name in wanted})
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def transformer_bytes(self, checkpoint: Checkpoint) -> int:
        """What `checkpoint`'s transformer will take once loaded in the pool's dtype (0 for `tiny`)."""
        if checkpoint.folder is None:
            return 0
        return checkpoint_tensor_elements(checkpoint.folder / "transformer") * self._dtype.itemsize

    def fresh_transformer(self, checkpoint: Checkpoint) -> torch.nn.Module:
        """`checkpoint`'s transformer loaded anew (for a dropped one coming back)."""
        transformer = self._read_transformer(checkpoint)
        self._loras.apply(transformer)
        return transformer

    def _read_transformer(self, checkpoint: Checkpoint) -> torch.nn.Module:
        if checkpoint.is_tiny:
            tiny: torch.nn.Module = build_tiny_transformer().to(self._dtype)
            return tiny
        assert checkpoint.folder is not None
        with _loading_onto(self._load_to) as device_map:
            try:
                loaded: torch.nn.Module = QwenImageTransformer2DModel.from_pretrained(
                    checkpoint.folder, subfolder="transformer", dtype=self._dtype, **device_map
                )
                return loaded
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise CheckpointUnavailable(f"could not reload the transformer in {checkpoint.folder}: {exc}") from exc

    def _components(self, model: ModelName, checkpoint: Checkpoint) -> dict[str, Any]:
        if checkpoint.ref not in self._by_checkpoint:
            loaded = self._load(model, checkpoint)
            self._loras.apply(loaded["transformer"])
            if self._share:
                for name in SHARED_COMPONENTS:
                    self._shared.setdefault(name, loaded[name])
            self._by_checkpoint[checkpoint.ref] = loaded
        components = dict(self._by_checkpoint[checkpoint.ref])
        if self._share:
            components.update(self._shared)
        return components

    def _load(self, model: ModelName, checkpoint: Checkpoint) -> dict[str, Any]:
        if checkpoint.is_tiny:
            components = build_tiny_components()
            if self._dtype == torch.float32:  # built in float32 already
                return components
            for name in ("transformer", "vae", "text_encoder"):
                components[name] = components[name].to(self._dtype)
            return components
        assert checkpoint.folder is not None
        return self._load_folder(model, checkpoint.folder)

    def _load_folder(self, model: ModelName, folder: Path) -> dict[str, Any]:
        # Every Qwen-Image checkpoint has the text-to-image components; edit checkpoints add a
        # processor, which we load ourselves (see processor.py). One loading path serves all models.
        reuse = {name: self._shared[name] for name in SHARED_COMPONENTS if name in self._shared}
        try:
            with _loading_onto(self._load_to) as device_map:
                pipeline = QwenImagePipeline.from_pretrained(folder, dtype=self._dtype, **device_map, **reuse)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointUnavailable(f"could not load the checkpoint in {folder}: {exc}") from exc
        components: dict[str, Any] = dict(pipeline.components)
        if (folder / "processor").is_dir():
            components["processor"] = load_processor(folder / "processor")
        elif model is not ModelName.QWEN_IMAGE:
            raise CheckpointUnavailable(f"{folder} has no processor/ folder, so it cannot serve the edit model {model}")
        return components


def pipeline_class_for(model: ModelName, mode: PipelineMode) -> type[DiffusionPipeline]:
    if mode is PipelineMode.STANDARD:
        return PIPELINE_CLASSES[model]
    return MODE_PIPELINE_CLASSES[(model, mode)]  # the domain allows the other modes only where they are here


@contextlib.contextmanager
def _loading_onto(device: torch.device | None) -> Iterator[dict[str, str]]:
    """The `device_map` argument that loads onto `device`. Diffusers' pipeline loader accepts only a
    bare device type ("cuda", "cpu"); for `cuda:N` the current CUDA device says which card."""
    if device is None:
        yield {}
    elif device.type == "cuda" and device.index is not None:
        with torch.cuda.device(device.index):
            yield {"device_map": "cuda"}
    else:
        yield {"device_map": device.type}


def checkpoint_tensor_elements(folder: Path) -> int:
    """How many elements the tensors of the safetensors files in `folder` have, read from the files'
    headers (a JSON table of names, dtypes and shapes) without loading any weight."""
    elements = 0
    for path in folder.glob("*.safetensors"):
        with path.open("rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                elements += math.prod(entry["shape"])
    return elements


def _component_names(pipeline_class: type[DiffusionPipeline]) -> set[str]:
    expected, _optional = pipeline_class._get_signature_keys(pipeline_class)
    return set(expected)
