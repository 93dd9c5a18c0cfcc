"""The tiny tokenizer must drop exactly the template tokens the real pipelines drop."""

from __future__ import annotations

from typing import Any

import pytest
from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline, QwenImagePipeline

from qwen_image_server.engine import tiny_tokenizer
from qwen_image_server.engine.tiny import build_tiny_components
from qwen_image_server.engine.tiny_tokenizer import (
    DROPPED_TOKENS,
    EDIT_PREFIX,
    TEXT_TO_IMAGE_PREFIX,
    build_tiny_tokenizer,
)


@pytest.fixture(scope="module")
def pipelines() -> dict[str, Any]:
    components = build_tiny_components()
    processor = components.pop("processor")
    return {
        "t2i": QwenImagePipeline(**components),
        "edit": QwenImageEditPipeline(processor=processor, **components),
        "edit-plus": QwenImageEditPlusPipeline(processor=processor, **components),
    }


def _before(template: str, marker: str) -> str:
    return template[: template.index(marker)]


def test_our_prefixes_are_the_pipelines_own(pipelines: dict[str, Any]) -> None:
    assert _before(pipelines["t2i"].prompt_template_encode, "{}") == TEXT_TO_IMAGE_PREFIX
    assert _before(pipelines["edit"].prompt_template_encode, "<|vision_start|>") == EDIT_PREFIX
    assert _before(pipelines["edit-plus"].prompt_template_encode, "{}") == EDIT_PREFIX


def test_the_pipelines_drop_the_counts_we_train_for(pipelines: dict[str, Any]) -> None:
    assert pipelines["t2i"].prompt_template_encode_start_idx == DROPPED_TOKENS["text-to-image"] == 34
    assert pipelines["edit"].prompt_template_encode_start_idx == DROPPED_TOKENS["edit"] == 64
    assert pipelines["edit-plus"].prompt_template_encode_start_idx == DROPPED_TOKENS["edit"]


def test_prefixes_tokenize_to_exactly_the_dropped_counts() -> None:
    tokenizer = build_tiny_tokenizer()
    assert len(tokenizer(TEXT_TO_IMAGE_PREFIX, add_special_tokens=False).input_ids) == 34
    assert len(tokenizer(EDIT_PREFIX, add_special_tokens=False).input_ids) == 64


@pytest.mark.parametrize(("prefix", "drop"), [(TEXT_TO_IMAGE_PREFIX, 34), (EDIT_PREFIX, 64)])
def test_the_user_prompt_survives_the_drop_whole(prefix: str, drop: int) -> None:
    tokenizer = build_tiny_tokenizer()
    prompt = "a red fox in snow, photographed at dusk"
    full = tokenizer(prefix + prompt, add_special_tokens=False).input_ids
    alone = tokenizer(prompt, add_special_tokens=False).input_ids
    assert full[drop:] == alone


def test_special_tokens_are_single_tokens_with_the_ids_the_text_encoder_knows() -> None:
    components = build_tiny_components()
    tokenizer, config = components["tokenizer"], components["text_encoder"].config
    assert tokenizer.tokenize("<|image_pad|>") == ["<|image_pad|>"]
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == config.image_token_id
    assert tokenizer.convert_tokens_to_ids("<|vision_start|>") == config.vision_start_token_id
    assert len(tokenizer) == config.text_config.vocab_size


def test_training_is_deterministic() -> None:
    first = build_tiny_tokenizer().get_vocab()
    tiny_tokenizer._trained_vocab_and_merges.cache_clear()
    second = build_tiny_tokenizer().get_vocab()
    assert first == second
