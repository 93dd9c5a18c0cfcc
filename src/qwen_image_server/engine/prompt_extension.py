"""Prompt extension: the pipeline's own text encoder rewrites a short prompt into a fuller image prompt.

DashScope's `prompt_extend` sends the prompt through a language model first and reports the result
as `actual_prompt`. Every Qwen-Image pipeline already holds a whole Qwen2.5-VL
(`Qwen2_5_VLForConditionalGeneration`) as its text encoder, so we generate with that: no second
model, no extra memory beyond the generation's key/value cache.

Design:
- The chat is Qwen2.5-VL's (`<|im_start|>system ... <|im_end|>`), as the diffusers pipelines format
  it for encoding, with our own system instruction (`SYSTEM_INSTRUCTION`, or `EDIT_SYSTEM_INSTRUCTION`
  when input pictures are given). For the edit models the pictures go through the processor exactly
  as `QwenImageEditPlusPipeline` sends them ("Picture 1: <|vision_start|><|image_pad|><|vision_end|>"
  ..., each resized to the pipeline's condition area of 384x384 pixels), so the model sees them.
- Greedy decoding: the same prompt and pictures always give the same extension (whatever the
  request's seed), on any device, with no random state read or advanced; a retried or repeated
  request reports the same `actual_prompt`. It is also what Qwen2.5-VL-Instruct ships as its own
  default (top_k=1), with the same repetition penalty (1.05) against greedy loops.
- Every generation setting is passed explicitly in a fresh `GenerationConfig`, so a checkpoint's
  `generation_config.json` (sampling flags) changes nothing, and the model's own is never modified.
- The text encoder is left as found: no mode change, the key/value cache is the call's own, and
  the multimodal rotary offsets Qwen2.5-VL keeps on itself during `generate` (`rope_deltas`) are put
  back afterwards.
- The output is cleaned (special tokens, control characters, a "Rewritten prompt:" style preamble,
  enclosing quotes, line breaks folded into one paragraph); output with no letter or digit left is
  unusable and gives `None`, so the caller keeps the user's prompt.
- Library errors become `GenerationFailed` (chained, so the engine's out-of-memory recovery still
  recognises an out-of-memory error).

Measured (bench/prompt_extension.py --tiny, OMP_NUM_THREADS=1, a shared 2-core CPU): the tiny
model generates ~720 tokens/s, 70 ms for 50 tokens and 280 ms for 200, with or without a picture;
that is `generate`'s per-token overhead, not a model's. The full-size Qwen2.5-VL-7B (the same bench
without --tiny) needs a GPU and has not been measured yet; decoding is memory-bound there, about
15 GB of weights read per token (over 3 ms a token on an H200 at best), so its cost is set by
`max_new_tokens`, a fixed prefill aside.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import CONDITION_IMAGE_SIZE, calculate_dimensions
from PIL import Image
from transformers import GenerationConfig

from qwen_image_server.errors import GenerationFailed, QwenImageError

SYSTEM_INSTRUCTION = (
    "You turn a short request for a picture into a complete, vivid image prompt. Keep the request's "
    "language, meaning and every detail it gives, and add nothing that contradicts it. Fill in what it "
    "leaves open: the main subject and what it is doing, the composition and point of view, the setting "
    "and background, the lighting and time of day, the style or medium, and the main colours. If the "
    "picture must show written words, give them exactly as asked, inside double quotes. Answer with the "
    "rewritten prompt only, as one paragraph, with no title, preamble or explanation."
)

EDIT_SYSTEM_INSTRUCTION = (
    "You turn a short request to edit the given picture or pictures into a complete, precise edit "
    "instruction. Look at the pictures, then say what to change, where, and how the result should look: "
    "the subject, composition, setting, lighting, style or medium and colours that the change concerns, "
    "and that everything else stays as it is. Refer to the inputs as Picture 1, Picture 2 and so on. "
    "Keep the request's language, meaning and every detail it gives, and add nothing that contradicts "
    "it. If the picture must show written words, give them exactly as asked, inside double quotes. "
    "Answer with the rewritten instruction only, as one paragraph, with no title, preamble or explanation."
)
# Pixwith's `prompt_optimization`: the prompt in English, nothing added.
TRANSLATE_INSTRUCTION = (
    "Translate the user's request for a picture into natural English. Keep every detail and its meaning, add "
    "nothing, and leave any words that must appear written in the picture exactly as they are, inside double "
    "quotes. If it is already English, repeat it unchanged. Answer with the English text only."
)

# Qwen2.5-VL-Instruct's own default against greedy repetition loops.
REPETITION_PENALTY = 1.05
MAX_PICTURES = 3  # what the edit-plus pipeline takes

_PICTURE = "Picture {}: <|vision_start|><|image_pad|><|vision_end|>"  # the edit-plus pipeline's wording
_PREAMBLE = re.compile(
    r"^\s*(?:here(?:'s| is)\b[^:\n]{0,60}:"
    r"|(?:the\s+)?(?:rewritten|improved|expanded|enhanced|refined|new|final|edit)?\s*(?:image\s+)?"
    r"(?:prompt|instruction)\s*[:：])\s*",
    re.IGNORECASE,
)
_QUOTE_PAIRS = {'"': '"', "'": "'", "“": "”", "‘": "’", "「": "」", "『": "』", "«": "»", "`": "`"}


@dataclass(frozen=True)
class Extension:
    """One extension: the new prompt (None when the output was unusable), the tokens generated
    (end-of-turn token included) and the seconds it took, inputs prepared to text decoded."""

    prompt: str | None
    new_tokens: int
    seconds: float


def extend_prompt(
    text_encoder: Any,
    tokenizer: Any,
    prompt: str,
    *,
    images: Sequence[Image.Image] = (),
    processor: Any = None,
    max_new_tokens: int = 200,
    device: torch.device | None = None,
    instruction: str | None = None,
) -> str | None:
    """The rewritten prompt, or None when the model gave nothing usable (keep the user's prompt).

    `images` (edit models, 1-3 pictures) need the pipeline's `processor`; `device` is where the
    text encoder runs (default: where its weights are; pass `pipeline._execution_device` when offloading).
    `instruction` replaces the system instruction (e.g. `TRANSLATE_INSTRUCTION`).
    """
    found = extend(text_encoder, tokenizer, prompt, images=images, processor=processor,
                   max_new_tokens=max_new_tokens, device=device, instruction=instruction)  # fmt: skip
    return found.prompt


def extend(
    text_encoder: Any,
    tokenizer: Any,
    prompt: str,
    *,
    images: Sequence[Image.Image] = (),
    processor: Any = None,
    max_new_tokens: int = 200,
    min_new_tokens: int = 0,
    device: torch.device | None = None,
    instruction: str | None = None,
) -> Extension:
    """`extend_prompt` with its cost: the tokens generated and the seconds taken. `min_new_tokens`
    holds off the end of turn (benchmarks: a random-weight model may end at once)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if images and processor is None:
        raise ValueError("input pictures need the pipeline's processor")
    if len(images) > MAX_PICTURES:
        raise ValueError(f"at most {MAX_PICTURES} input pictures, got {len(images)}")
    started = time.perf_counter()
    with _failures_translated(), torch.inference_mode(), _rope_offsets_restored(text_encoder):
        inputs = _placed(_model_inputs(tokenizer, processor, prompt, images, instruction),
                         device or text_encoder.device, text_encoder.dtype)  # fmt: skip
        config = _generation_config(tokenizer, max_new_tokens, min_new_tokens)
        output = text_encoder.generate(**inputs, generation_config=config)
        new_ids = output[0, inputs["input_ids"].shape[1] :].tolist()
        text = tokenizer.decode(new_ids, skip_special_tokens=True)
    return Extension(cleaned(text), len(new_ids), time.perf_counter() - started)


def chat_text(prompt: str, pictures: int = 0, instruction: str | None = None) -> str:
    """The chat the text encoder continues: our instruction, the pictures and the user's prompt."""
    system = instruction or (EDIT_SYSTEM_INSTRUCTION if pictures else SYSTEM_INSTRUCTION)
    user = "".join(_PICTURE.format(number) for number in range(1, pictures + 1)) + prompt
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def cleaned(text: str) -> str | None:
    """The model's answer as one clean paragraph, or None if nothing of substance is left."""
    text = " ".join(text.split())  # line breaks and runs of spaces: one paragraph
    text = "".join(char for char in text if unicodedata.category(char) != "Cc" and char != "\ufffd")
    text = _PREAMBLE.sub("", text, count=1).strip()
    while len(text) >= 2 and _QUOTE_PAIRS.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    return text if any(char.isalnum() for char in text) else None


def _model_inputs(
    tokenizer: Any, processor: Any, prompt: str, images: Sequence[Image.Image], instruction: str | None
) -> Any:
    text = chat_text(prompt, len(images), instruction)
    if not images:
        return tokenizer(text, return_tensors="pt")
    pictures = [_condition_sized(image) for image in images]
    return processor(text=[text], images=pictures, return_tensors="pt")


def _placed(inputs: Any, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The inputs on the encoder's device; pixel values in its dtype, token ids left as integers."""
    return {
        name: tensor.to(device, dtype=dtype if tensor.is_floating_point() else None) for name, tensor in inputs.items()
    }


def _condition_sized(image: Image.Image) -> Image.Image:
    """The picture at the area the edit-plus pipeline shows its text encoder (384x384, its aspect kept):
    bounded vision tokens, and the model sees what it will see when encoding the prompt."""
    width, height = calculate_dimensions(CONDITION_IMAGE_SIZE, image.width / image.height)
    return image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)


def _generation_config(tokenizer: Any, max_new_tokens: int, min_new_tokens: int) -> GenerationConfig:
    end_of_turn = [int(tokenizer.convert_tokens_to_ids(token)) for token in ("<|im_end|>", "<|endoftext|>")]
    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        repetition_penalty=REPETITION_PENALTY,
        eos_token_id=end_of_turn,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_of_turn[1],
    )


@contextmanager
def _rope_offsets_restored(text_encoder: Any) -> Iterator[None]:
    """Qwen2.5-VL's `generate` stores the prompt's rotary offsets on the model for later decoding
    steps; put back what was there, so the encoder is exactly as the pipeline left it."""
    model = getattr(text_encoder, "model", None)
    saved = getattr(model, "rope_deltas", None)
    try:
        yield
    finally:
        if model is not None and hasattr(model, "rope_deltas"):
            model.rope_deltas = saved


@contextmanager
def _failures_translated() -> Iterator[None]:
    try:
        yield
    except QwenImageError:
        raise
    except Exception as exc:  # chained: memory.recover_from_oom finds an out-of-memory cause
        raise GenerationFailed(f"prompt extension failed: {type(exc).__name__}: {exc}") from exc
