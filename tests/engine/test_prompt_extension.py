"""Prompt extension with the tiny model's real text encoder, tokenizer and processor: deterministic,
bounded, sees the input pictures, leaves the encoder as the pipeline needs it, and gives None for
output with nothing usable in it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from qwen_image_server.engine.memory import out_of_memory_cause
from qwen_image_server.engine.prompt_extension import (
    EDIT_SYSTEM_INSTRUCTION,
    SYSTEM_INSTRUCTION,
    chat_text,
    cleaned,
    extend,
    extend_prompt,
)
from qwen_image_server.engine.tiny import build_tiny_components
from qwen_image_server.errors import GenerationFailed

PROMPT = "a red fox in fresh snow"
RED = Image.new("RGB", (640, 480), (220, 20, 20))
BLUE = Image.new("RGB", (480, 640), (20, 20, 220))


@pytest.fixture(scope="module")
def tiny() -> dict[str, Any]:
    """Shared by the tests that only read the components."""
    return build_tiny_components()


def _extend(components: dict[str, Any], prompt: str = PROMPT, **options: Any) -> Any:
    return extend(components["text_encoder"], components["tokenizer"], prompt, **options)


def test_the_same_prompt_gives_the_same_extension(tiny: dict[str, Any]) -> None:
    first, second = _extend(tiny), _extend(tiny)
    assert first.prompt is not None and first.prompt == second.prompt
    assert first.prompt != PROMPT
    assert extend_prompt(tiny["text_encoder"], tiny["tokenizer"], PROMPT) == first.prompt


def test_generation_stops_at_max_new_tokens(tiny: dict[str, Any]) -> None:
    short, long = _extend(tiny, max_new_tokens=7), _extend(tiny, max_new_tokens=200)
    assert short.new_tokens == 7  # the random model does not end its turn that soon
    assert long.new_tokens <= 200
    assert short.prompt is not None and long.prompt is not None
    assert long.prompt.startswith(short.prompt)  # greedy: the short one is the long one cut off


def test_the_model_sees_the_input_pictures(tiny: dict[str, Any]) -> None:
    seen = {
        name: _extend(tiny, "make it green", images=pictures, processor=tiny["processor"], max_new_tokens=60).prompt
        for name, pictures in {"red": [RED], "blue": [BLUE], "both": [RED, BLUE]}.items()
    }
    assert all(seen.values())
    assert len(set(seen.values())) == 3, seen


def test_the_chat_is_qwens_with_our_instruction_and_the_pictures_numbered() -> None:
    assert chat_text("a cat") == (
        f"<|im_start|>system\n{SYSTEM_INSTRUCTION}<|im_end|>\n"
        "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"
    )
    edit = chat_text("make it blue", pictures=2)
    assert EDIT_SYSTEM_INSTRUCTION in edit
    assert "Picture 1: <|vision_start|><|image_pad|><|vision_end|>Picture 2: <|vision_start|>" in edit
    assert edit.endswith("<|vision_end|>make it blue<|im_end|>\n<|im_start|>assistant\n")


def _pipeline_image(components: dict[str, Any]) -> np.ndarray:
    from diffusers import QwenImagePipeline

    pipeline = QwenImagePipeline(**{name: part for name, part in components.items() if name != "processor"})
    pipeline.set_progress_bar_config(disable=True)
    output = pipeline(prompt=PROMPT, width=256, height=256, num_inference_steps=2,
                      generator=torch.Generator().manual_seed(3), output_type="np")  # fmt: skip
    return np.asarray(output.images[0])


def test_the_pipeline_gives_the_same_image_after_an_extension() -> None:
    components = build_tiny_components()
    encoder = components["text_encoder"]
    generation_config = encoder.generation_config.to_dict()
    before = _pipeline_image(components)
    _extend(components, max_new_tokens=20)
    _extend(components, "make it green", images=[RED, BLUE], processor=components["processor"], max_new_tokens=20)
    after = _pipeline_image(components)
    assert np.array_equal(before, after)
    assert not encoder.training
    assert encoder.generation_config.to_dict() == generation_config
    assert encoder.model.rope_deltas is None  # generate's rotary offsets put back


def test_an_immediate_end_of_turn_gives_none() -> None:
    components = build_tiny_components()
    with torch.no_grad():
        components["text_encoder"].lm_head.weight.zero_()  # every logit ties: id 0, <|endoftext|>, wins
    found = _extend(components)
    assert (found.prompt, found.new_tokens) == (None, 1)
    forced = _extend(components, max_new_tokens=4, min_new_tokens=4)  # what the bench uses
    assert forced.new_tokens == 4


def test_only_special_tokens_gives_none() -> None:
    components = build_tiny_components()
    encoder, tokenizer = components["text_encoder"], components["tokenizer"]
    vocabulary, hidden = encoder.lm_head.weight.shape
    special = torch.nn.Linear(hidden, vocabulary, bias=True)
    with torch.no_grad():
        special.weight.zero_()
        special.bias.zero_()
        special.bias[tokenizer.convert_tokens_to_ids("<|vision_start|>")] = 1.0
    encoder.lm_head = special
    found = _extend(components, max_new_tokens=6)
    assert (found.prompt, found.new_tokens) == (None, 6)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  A fox in snow.  ", "A fox in snow."),
        ("Rewritten prompt: A fox\n\nin snow.", "A fox in snow."),
        ('Here is the rewritten prompt: "A fox in snow."', "A fox in snow."),
        ("“一只在雪地里的狐狸”", "一只在雪地里的狐狸"),
        ('A sign that reads "OPEN", at dusk', 'A sign that reads "OPEN", at dusk'),
        ("A fox\x04 in\ufffd snow", "A fox in snow"),
        ("", None),
        ("  \n\t ", None),
        ('"  "', None),
        ("Prompt:", None),
        ("\x04\x7f...", None),
    ],
)
def test_the_answer_is_cleaned_to_one_paragraph(raw: str, expected: str | None) -> None:
    assert cleaned(raw) == expected


def test_misuse_is_refused(tiny: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="max_new_tokens"):
        _extend(tiny, max_new_tokens=0)
    with pytest.raises(ValueError, match="processor"):
        _extend(tiny, images=[RED])
    with pytest.raises(ValueError, match="at most 3"):
        _extend(tiny, images=[RED] * 4, processor=tiny["processor"])


def test_a_picture_the_processor_refuses_becomes_generation_failed(tiny: dict[str, Any]) -> None:
    sliver = Image.new("RGB", (4000, 1), (0, 200, 0))  # no picture at 384x384 area (nor for the pipeline)
    with pytest.raises(GenerationFailed, match="prompt extension failed: ValueError"):
        _extend(tiny, "make it wider", images=[sliver], processor=tiny["processor"], max_new_tokens=5)


class _OutOfMemoryEncoder:
    """A stub: the one way to make generation fail as the GPU would."""

    device = torch.device("cpu")
    dtype = torch.float32

    def generate(self, **_: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_a_library_failure_becomes_generation_failed_and_out_of_memory_stays_visible(tiny: dict[str, Any]) -> None:
    with pytest.raises(GenerationFailed, match="prompt extension failed: OutOfMemoryError") as caught:
        extend(_OutOfMemoryEncoder(), tiny["tokenizer"], PROMPT)
    assert out_of_memory_cause(caught.value) is not None  # memory.recover_from_oom still frees memory
