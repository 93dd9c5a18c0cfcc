"""Safety checkers: per generated picture, the probability that it is NSFW (0..1).

Two kinds, both batched (all pictures of a call in one forward pass, under `inference_mode`):

- `ClassifierChecker`: a Hugging Face image classifier (`AutoModelForImageClassification` with the
  PIL image processor: torchvision is not installed). Loaded from a local folder, or a repo id
  resolved to a snapshot of its safetensors and JSON files only (pickle weights never reach the
  disk). The unsafe classes are read from `config.id2label`; the score is the sum of their softmax
  probabilities. The suggested one is `Falconsai/nsfw_image_detection` (ViT-base, 86 M parameters,
  labels normal/nsfw).
- `VisionLanguageChecker`: the pipelines' own Qwen2.5-VL text encoder, asked `QUESTION` about each
  picture. One forward pass, no generation: the next-token logits of `Yes`/`No` (every spelling the
  tokenizer has as one token) are softmaxed together and the `Yes` share is the score. Only the last
  position's logits are computed and no KV cache is kept, so it costs activations and no weights.
  Pictures are first scaled down to `max_pixels` (448x448: 256 visual tokens), which bounds its cost.

Library errors are translated here, once: a checker that cannot be set up raises
`CheckpointUnavailable`, a check that fails raises `SafetyCheckFailed` (the caller decides whether
to withhold the images or deliver them unchecked).

Measured (bench/safety_checker.py, 1024x1024 pictures, 2 shared CPU cores, float32, one torch
thread): a ViT-base classifier 652 ms per picture at batch 1, 636 at batch 4 (of which ~10 ms is
the PIL preprocessing); the tiny classifier 11.7 ms, the tiny VL checker 18.2 ms. Full-size figures
on a GPU (ViT-base; Qwen2.5-VL-7B) come from the same script without `--tiny`; not measured yet.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from qwen_image_server.engine.hub import names_a_repo
from qwen_image_server.errors import CheckpointUnavailable, SafetyCheckFailed

SUGGESTED_CLASSIFIER = "Falconsai/nsfw_image_detection"
DEFAULT_THRESHOLD = 0.5
UNSAFE_LABELS = frozenset({"nsfw", "porn", "hentai", "sexy", "unsafe", "explicit"})
SAFE_LABELS = frozenset({"normal", "neutral", "safe", "sfw", "drawings"})
QUESTION = "Is this image sexually explicit, nude or otherwise not safe for work? Answer yes or no."
VL_MAX_PIXELS = 448 * 448
YES_SPELLINGS = ("Yes", "yes", " Yes", " yes")
NO_SPELLINGS = ("No", "no", " No", " no")
_LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, ImportError)


class SafetyChecker(Protocol):
    def check(self, pictures: Sequence[Image.Image]) -> list[float]:
        """Per picture, in order, the probability (0..1) that it is NSFW."""
        ...


def flagged(score: float, threshold: float = DEFAULT_THRESHOLD) -> bool:
    """NSFW when the score reaches the threshold (a tie is flagged: the cautious side)."""
    return score >= threshold


class ClassifierChecker:
    """An image classifier with at least one unsafe class; runs where its weights are."""

    def __init__(self, model: Any, processor: Any, *, unsafe_labels: Collection[str] | None = None) -> None:
        self._model = model.eval().requires_grad_(False)
        self._processor = processor
        self.unsafe_ids = unsafe_label_ids(model.config.id2label, unsafe_labels)
        parameter = next(model.parameters())
        self._device, self._dtype = parameter.device, parameter.dtype

    @classmethod
    def load(
        cls,
        source: str,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        unsafe_labels: Collection[str] | None = None,
    ) -> ClassifierChecker:
        """The classifier in `source` (a folder or a repo id) on `device` in `dtype`."""
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        folder = resolve_classifier_folder(source)
        try:
            model = AutoModelForImageClassification.from_pretrained(folder, use_safetensors=True)
            # `backend="pil"` is transformers 5's name for the slow processor (`use_fast=False`).
            processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
            model = model.to(device=device, dtype=dtype)
        except _LOAD_ERRORS as exc:
            raise CheckpointUnavailable(f"could not load the safety classifier in {folder}: {exc}") from exc
        return cls(model, processor, unsafe_labels=unsafe_labels)

    def check(self, pictures: Sequence[Image.Image]) -> list[float]:
        if not pictures:
            return []
        try:
            with torch.inference_mode():
                inputs = self._processor(images=[_rgb(picture) for picture in pictures], return_tensors="pt")
                pixels = inputs["pixel_values"].to(self._device, self._dtype)
                probabilities = self._model(pixel_values=pixels).logits.float().softmax(dim=-1)
                scores: list[float] = probabilities[:, self.unsafe_ids].sum(dim=-1).clamp(0, 1).tolist()
        except Exception as exc:  # any model's and processor's code runs here; the caller needs one type
            raise SafetyCheckFailed(f"the safety classifier failed on {len(pictures)} picture(s): {exc}") from exc
        return scores


def unsafe_label_ids(id2label: Mapping[int, str], unsafe_labels: Collection[str] | None = None) -> list[int]:
    """The class ids that mean unsafe. Known labels are recognised by name; a label that is neither
    known safe nor known unsafe is refused (counting it on either side would be a guess) unless
    `unsafe_labels` names the unsafe ones explicitly (the others then count as safe)."""
    names = {int(index): str(label).strip().lower() for index, label in id2label.items()}
    listed = ", ".join(f"{index}: {label!r}" for index, label in sorted(names.items()))
    if unsafe_labels is not None:
        wanted = {label.strip().lower() for label in unsafe_labels}
        chosen = sorted(index for index, label in names.items() if label in wanted)
        if not chosen or len(chosen) < len(wanted):
            raise CheckpointUnavailable(f"the safety classifier's labels ({listed}) lack some of {sorted(wanted)}")
        return chosen
    unsafe = sorted(index for index, label in names.items() if label in UNSAFE_LABELS)
    unknown = sorted(label for label in names.values() if label not in UNSAFE_LABELS | SAFE_LABELS)
    if not unsafe or unknown:
        why = "no unsafe label" if not unsafe else f"labels it does not know ({', '.join(unknown)})"
        raise CheckpointUnavailable(
            f"the safety classifier has {why}; its labels are {listed}. Unsafe labels are "
            f"{', '.join(sorted(UNSAFE_LABELS))}; safe ones {', '.join(sorted(SAFE_LABELS))}"
        )
    return unsafe


def resolve_classifier_folder(source: str) -> Path:
    """A local folder holding `config.json`, or the hub snapshot of the repo id `source`."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointUnavailable(f"{path} is not a transformers model folder (no config.json)")
        return path
    if not names_a_repo(source):
        raise CheckpointUnavailable(f"no safety classifier folder at {path}, and it is not a repo id")
    from huggingface_hub import snapshot_download

    try:
        # JSON and safetensors only: a repo's pickle weights (`pytorch_model.bin`) are never fetched.
        return Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as exc:  # the hub client raises many unrelated types for "not reachable"
        raise CheckpointUnavailable(
            f"could not get the safety classifier {source} from the Hugging Face hub or its local cache "
            f"({type(exc).__name__}); download it first, or give a local folder"
        ) from exc


@dataclass(frozen=True)
class AnswerTokens:
    """The token ids that begin a `Yes` and a `No` answer; `whole_words` when each is a whole word."""

    yes: tuple[int, ...]
    no: tuple[int, ...]
    whole_words: bool


def answer_tokens(tokenizer: Any) -> AnswerTokens:
    """The ids of `Yes`/`No` in every spelling the tokenizer has as one token (Qwen2's has all eight).
    A tokenizer without them (the tiny model's) gives the first token of each spelling instead: the
    model's odds of starting its answer with yes rather than no. Ids shared by both are dropped."""
    yes_whole, yes_first = _spelling_ids(tokenizer, YES_SPELLINGS)
    no_whole, no_first = _spelling_ids(tokenizer, NO_SPELLINGS)
    whole_words = bool(yes_whole and no_whole)
    yes, no = (yes_whole, no_whole) if whole_words else (yes_first, no_first)
    shared = yes & no
    if not yes - shared or not no - shared:
        raise CheckpointUnavailable(
            "the text encoder's tokenizer has no token that begins 'yes' but not 'no' (or the reverse), "
            "so it cannot serve as a safety checker; use a classifier checker"
        )
    return AnswerTokens(tuple(sorted(yes - shared)), tuple(sorted(no - shared)), whole_words)


def _spelling_ids(tokenizer: Any, spellings: Sequence[str]) -> tuple[set[int], set[int]]:
    """The ids of the spellings that are one token, and the first ids of all of them (unknowns left out)."""
    whole: set[int] = set()
    first: set[int] = set()
    for spelling in spellings:
        ids = [i for i in tokenizer.encode(spelling, add_special_tokens=False) if i != tokenizer.unk_token_id]
        if ids:
            first.add(ids[0])
        if len(ids) == 1:
            whole.add(ids[0])
    return whole, first


class VisionLanguageChecker:
    """Asks the pipelines' Qwen2.5-VL text encoder whether each picture is NSFW (no weights of its own)."""

    def __init__(
        self,
        text_encoder: Any,
        processor: Any,
        *,
        device: torch.device | None = None,
        max_pixels: int = VL_MAX_PIXELS,
    ) -> None:
        if text_encoder.get_output_embeddings() is None:
            raise CheckpointUnavailable("the text encoder has no language-model head, so it cannot answer yes or no")
        self._encoder = text_encoder
        self._processor = processor
        self._device = device or text_encoder.device
        self._max_pixels = max_pixels
        self.answers = answer_tokens(processor.tokenizer)
        # Qwen2.5-VL's chat template for one picture and a question, with its default system prompt.
        self.prompt = (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            f"<|vision_start|>{processor.image_token}<|vision_end|>{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
        )

    @classmethod
    def from_components(cls, components: Mapping[str, Any], **options: Any) -> VisionLanguageChecker:
        """From a pipeline's components: its `processor`, or (text-to-image checkpoints have none) one
        made of the PIL Qwen2-VL image processor and the pipeline's tokenizer."""
        processor = components.get("processor")
        if processor is None:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

            from qwen_image_server.engine.processor import ImageOnlyQwen2VLProcessor

            tokenizer = components["tokenizer"]
            processor = ImageOnlyQwen2VLProcessor(image_processor=Qwen2VLImageProcessorPil(), tokenizer=tokenizer)
        return cls(components["text_encoder"], processor, **options)

    def check(self, pictures: Sequence[Image.Image]) -> list[float]:
        if not pictures:
            return []
        try:
            with torch.inference_mode():
                logits = self._next_token_logits([self._fitted(picture) for picture in pictures])
                answers = logits[:, [*self.answers.yes, *self.answers.no]].float().softmax(dim=-1)
                scores: list[float] = answers[:, : len(self.answers.yes)].sum(dim=-1).clamp(0, 1).tolist()
        except Exception as exc:  # out of memory, device errors, a picture the processor cannot take
            raise SafetyCheckFailed(
                f"the vision-language safety check failed on {len(pictures)} picture(s): {exc}"
            ) from exc
        return scores

    def _next_token_logits(self, pictures: list[Image.Image]) -> torch.Tensor:
        # Left padding puts every prompt's last token in the last position, whatever its picture's size.
        inputs = self._processor(
            images=pictures, text=[self.prompt] * len(pictures), return_tensors="pt", padding=True, padding_side="left"
        )
        inputs = {name: tensor.to(self._device) for name, tensor in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self._encoder.dtype)
        output = self._encoder(**inputs, logits_to_keep=1, use_cache=False)
        logits: torch.Tensor = output.logits[:, -1]
        return logits

    def _fitted(self, picture: Image.Image) -> Image.Image:
        """The picture in RGB, scaled down (aspect kept) to at most `max_pixels`."""
        picture = _rgb(picture)
        width, height = picture.size
        if width * height <= self._max_pixels:
            return picture
        scale = math.sqrt(self._max_pixels / (width * height))
        size = (max(1, int(width * scale)), max(1, int(height * scale)))
        return picture.resize(size, Image.Resampling.BICUBIC)


def _rgb(picture: Image.Image) -> Image.Image:
    return picture if picture.mode == "RGB" else picture.convert("RGB")
