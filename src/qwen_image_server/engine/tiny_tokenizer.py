"""A small Qwen2 tokenizer trained offline, for the tiny test model.

The real Qwen2.5-VL tokenizer lives on the hub. The pipelines slice a hard-coded number of leading
tokens off the text encoder's output (the chat-template prefix): 34 for text-to-image and 64 for
edit. A tokenizer for the tiny model must therefore tokenize those prefixes to exactly the same
counts, or the pipelines would drop part of the user's prompt (or keep part of the template).

The Qwen2 pre-tokenizer splits both prefixes into exactly 34 and 64 pieces (special tokens included),
so a byte-level BPE that has learned every template word as one token reproduces the real counts.
We train one with `tokenizers`, weighting the template text heavily so that its words always merge
fully, and wrap it in the real `Qwen2Tokenizer` class.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import Qwen2Tokenizer

# The special tokens of Qwen2.5-VL, in the order of their ids in the real vocabulary.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# The system prompts of the diffusers pipelines, up to where the user's text begins. The pipelines
# drop exactly this many tokens of the encoded template.
TEXT_TO_IMAGE_PREFIX = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
    "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n"
)
EDIT_PREFIX = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, "
    "objects, background), then explain how the user's text instruction should alter or modify the "
    "image. Generate a new image that meets the user's requirements while maintaining consistency "
    "with the original input where appropriate.<|im_end|>\n<|im_start|>user\n"
)
DROPPED_TOKENS = {"text-to-image": 34, "edit": 64}

# Plain words so that ordinary prompts tokenize into word-sized pieces, as with the real model.
_COMMON_WORDS = """
a an the of in on at with and or to from by for is are be this that it its as into over under
image photo picture painting drawing illustration render scene portrait landscape close up view
red orange yellow green blue purple pink brown black white gray grey gold silver dark light bright
cat dog fox bird horse fish tree flower forest mountain river lake sea ocean sky cloud sun moon star
snow rain fog night day morning evening city street house car boat window door road bridge garden
man woman child person people face hand eye hair dress hat coat sitting standing running walking
small large big tiny huge old new young beautiful detailed sharp soft warm cold style make turn
add remove change replace background foreground left right top bottom center text sign logo
""".split()


def _training_corpus() -> list[str]:
    templates = [TEXT_TO_IMAGE_PREFIX, EDIT_PREFIX, "<|im_end|>\n<|im_start|>assistant\n"]
    for special in SPECIAL_TOKENS:  # special tokens are matched whole at run time, never merged
        templates = [text.replace(special, "\n") for text in templates]
    prose = " ".join(_COMMON_WORDS)
    # Repetition makes every template word the most frequent pair chain, so BPE merges it whole.
    return templates * 200 + [prose] * 20 + [w.capitalize() for w in _COMMON_WORDS]


@lru_cache(maxsize=1)
def _trained_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_corpus(), trainer=trainer)
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return vocab, [(left, right) for left, right in merges]


def build_tiny_tokenizer() -> Qwen2Tokenizer:
    """A fresh `Qwen2Tokenizer` for the tiny model; the same on every call (training is cached)."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = _trained_vocab_and_merges()
    tokenizer = Qwen2Tokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        model_max_length=32768,
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
    )
    # Already in the vocabulary with their ids; registering them makes the tokenizer match them
    # whole inside text, as the real Qwen tokenizer does with the chat template.
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    return tokenizer
