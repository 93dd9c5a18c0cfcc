"""The tiny Qwen-Image: the real diffusers/transformers classes with small configs and seeded weights.

It exists so that tests, demos and CI run the real pipelines offline, on a CPU, in well under a
second per image. Its images are noise (random weights), but every code path is the real one.
Building it twice gives the same weights: each component is initialised under its own fixed seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from qwen_image_server.engine.processor import ImageOnlyQwen2VLProcessor
from qwen_image_server.engine.tiny_tokenizer import build_tiny_tokenizer

TINY_CHECKPOINT = "tiny"
_TEXT_HIDDEN = 32

# The scheduler configuration that ships with Qwen/Qwen-Image (dynamic, exponential time shift).
QWEN_IMAGE_SCHEDULER_CONFIG: dict[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}


def _seeded(seed: int) -> torch.Generator:
    """Fix the global RNG that module constructors draw their initial weights from."""
    return torch.manual_seed(seed)


def build_tiny_transformer() -> QwenImageTransformer2DModel:
    """The tiny transformer alone, the same weights every time (a dropped one is rebuilt by this)."""
    _seeded(1)
    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,  # 16 latent channels packed 2x2, as in the real model
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_TEXT_HIDDEN,
        axes_dims_rope=(4, 6, 6),
    )


def _vae() -> AutoencoderKLQwenImage:
    _seeded(2)
    # Same depth as the real VAE (8x spatial down-sampling, 16 channels), far fewer features.
    return AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1)


def _text_encoder(vocab_size: int, special_ids: dict[str, int]) -> Qwen2_5_VLForConditionalGeneration:
    _seeded(3)
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": _TEXT_HIDDEN,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "bos_token_id": special_ids["<|endoftext|>"],
            "eos_token_id": special_ids["<|im_end|>"],
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3], "rope_theta": 1000000.0},
        },
        vision_config={
            "depth": 2,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": _TEXT_HIDDEN,
            "fullatt_block_indexes": [1],
            "window_size": 56,
        },
        image_token_id=special_ids["<|image_pad|>"],
        video_token_id=special_ids["<|video_pad|>"],
        vision_start_token_id=special_ids["<|vision_start|>"],
        vision_end_token_id=special_ids["<|vision_end|>"],
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def build_tiny_components() -> dict[str, Any]:
    """Every component a Qwen-Image pipeline (text-to-image or edit) takes, freshly built."""
    tokenizer = build_tiny_tokenizer()
    specials = ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    special_ids = {token: int(tokenizer.convert_tokens_to_ids(token)) for token in specials}
    # Few vision tokens per input image keep the tiny edit pipeline fast on a CPU.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=16 * 28 * 28)
    return {
        "transformer": build_tiny_transformer(),
        "vae": _vae().eval(),
        "text_encoder": _text_encoder(len(tokenizer), special_ids),
        "tokenizer": tokenizer,
        "processor": ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer),
        "scheduler": FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER_CONFIG),
    }


def save_tiny_model(folder: Path) -> None:
    """Write the tiny model as an ordinary diffusers folder (Qwen-Image layout plus `processor/`).

    The folder loads back through the same code as a real checkpoint, for every model name.
    """
    from diffusers import QwenImagePipeline

    components = build_tiny_components()
    processor = components.pop("processor")
    pipeline = QwenImagePipeline(**components)
    pipeline.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder / "processor")
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    # Edit pipelines find their processor here; name the stock class so plain diffusers can read it.
    index["processor"] = ["transformers", "Qwen2VLProcessor"]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
