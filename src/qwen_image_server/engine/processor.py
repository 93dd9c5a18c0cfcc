"""The Qwen2-VL processor without its video slot.

The stock `Qwen2VLProcessor` also builds a video processor, which needs torchvision. The edit
pipelines only ever pass images, and torchvision is not installable everywhere we run (its only
wheel on CPU machines is a CUDA build that breaks diffusers' imports), so we build and load the
processor from its image processor and tokenizer alone. The saved layout stays the stock one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import Qwen2Tokenizer, Qwen2VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):  # type: ignore[misc]
    def __init__(self, image_processor: Any = None, tokenizer: Any = None, **kwargs: Any) -> None:
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None, **kwargs)

    @classmethod
    def get_attributes(cls) -> list[str]:
        return ["image_processor", "tokenizer"]


def load_processor(folder: Path) -> ImageOnlyQwen2VLProcessor:
    """Load the processor saved under `folder` (a checkpoint's `processor/` subfolder)."""
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(folder)
    tokenizer = Qwen2Tokenizer.from_pretrained(folder)
    return ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer)
