"""All settings in one object, read once from flags, `QWEN_IMAGE_*` environment variables and defaults.

Precedence: values passed in code (the CLI's flags) over environment variables over defaults.
Every setting is documented in docs/settings.md; a test keeps the two in step.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from qwen_image_server.domain import ModelName

Offload = Literal["none", "model", "sequential", "group"]
DType = Literal["auto", "float32", "bfloat16", "float16"]

DEFAULT_CHECKPOINTS: dict[ModelName, str] = {
    ModelName.QWEN_IMAGE: "Qwen/Qwen-Image",
    ModelName.QWEN_IMAGE_EDIT: "Qwen/Qwen-Image-Edit",
    ModelName.QWEN_IMAGE_EDIT_PLUS: "Qwen/Qwen-Image-Edit-2509",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QWEN_IMAGE_", extra="forbid", frozen=True)

    checkpoint_qwen_image: str = Field(
        default=DEFAULT_CHECKPOINTS[ModelName.QWEN_IMAGE],
        description="Checkpoint of qwen-image: a Hugging Face repo id, a local diffusers folder, or `tiny`.",
    )
    checkpoint_qwen_image_edit: str = Field(
        default=DEFAULT_CHECKPOINTS[ModelName.QWEN_IMAGE_EDIT],
        description="Checkpoint of qwen-image-edit (one input image).",
    )
    checkpoint_qwen_image_edit_plus: str = Field(
        default=DEFAULT_CHECKPOINTS[ModelName.QWEN_IMAGE_EDIT_PLUS],
        description="Checkpoint of qwen-image-edit-plus (1-3 input images).",
    )
    device: str = Field(
        default="auto",
        description="`auto` (CUDA if present, else Apple MPS, else CPU), or a torch device such as `cuda:1`.",
    )
    dtype: DType = Field(
        default="auto",
        description="Weights and compute precision; `auto` is bfloat16 on a GPU, float32 on a CPU.",
    )
    offload: Offload = Field(
        default="none",
        description=(
            "Memory saving for smaller GPUs: `model` moves whole components to the GPU as they run, "
            "`sequential` streams layer by layer (least memory, slowest), `group` offloads groups of "
            "layers with prefetching on a CUDA stream."
        ),
    )
    vae_tiling: bool = Field(default=False, description="Decode in tiles to cut the VAE's peak memory at large sizes.")
    share_components: bool = Field(
        default=True,
        description="Load the text encoder and VAE once and share them between the models (they are the same).",
    )

    def checkpoint_for(self, model: ModelName) -> str:
        return {
            ModelName.QWEN_IMAGE: self.checkpoint_qwen_image,
            ModelName.QWEN_IMAGE_EDIT: self.checkpoint_qwen_image_edit,
            ModelName.QWEN_IMAGE_EDIT_PLUS: self.checkpoint_qwen_image_edit_plus,
        }[model]

    def with_checkpoint(self, model: ModelName, checkpoint: str) -> Settings:
        return self.model_copy(update={f"checkpoint_{model.value.replace('-', '_')}": checkpoint})
