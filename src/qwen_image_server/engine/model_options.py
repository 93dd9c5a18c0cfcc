"""The options a request can ask for around the model: its prompt extended before the call, its
pictures checked for safety after it. Both use a model the engine has at hand, so they run inside
the engine's call, on its device.

- **Prompt extension** (`prompt_extend`; setting `prompt_extension`): the pipeline's own text encoder
  is a whole Qwen2.5-VL, so it rewrites the prompt (engine/prompt_extension.py; an edit model sees
  its input pictures while it does). The request runs with the new prompt, and the task reports it
  (`actual_prompt`). Off on the server: the request runs as given and is told.
- **Safety check** (`safety_check`; setting `safety_checker`): per picture a score, flagged from
  `safety_threshold` (engine/safety.py: an image classifier, or the loaded Qwen2.5-VL asked about the
  picture). What a flagged picture gets is `nsfw_action`, applied when it is finished
  (provenance/finishing.py). A checker that fails marks each picture `failed`; `safety_fail_closed`
  decides there. No checker configured: the request is told.

Nothing is silently dropped: every option asked for and not applied is in the request's notes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from PIL import Image

from qwen_image_server.domain import BatchEntry, GenerationRequest
from qwen_image_server.engine.prompt_extension import TRANSLATE_INSTRUCTION
from qwen_image_server.errors import QwenImageError
from qwen_image_server.provenance.finishing import NOT_CHECKED, SafetyVerdict
from qwen_image_server.report import RequestNotes
from qwen_image_server.settings import Settings

log = logging.getLogger(__name__)

EXTENSION_OFF = "prompt extension is turned off on this server (setting prompt_extension)"
EXTENSION_EMPTY = "the language model gave no usable prompt; the prompt was used as given"
NO_CHECKER = "no safety checker is configured on this server (setting safety_checker)"
PREVIEWS_UNCHECKED = "previews are not sent for safety-checked images: only checked pictures leave the server"


class ModelOptions:
    """Prompt extension and safety checks for the engine's calls."""

    def __init__(self, settings: Settings, device: Any, dtype: Any) -> None:
        self.settings = settings
        self._device, self._dtype = device, dtype
        self._classifier: Any = None

    def notes_before(self, request: GenerationRequest) -> RequestNotes:
        """The request's options this server will not apply, known before anything runs: those its
        dialect noted when it accepted the request first."""
        notes = RequestNotes(not_applied=request.not_applied)
        for option in ("prompt_translate", "prompt_extend"):
            if getattr(request, option) and not self.settings.prompt_extension:
                notes = notes.with_not_applied(option, EXTENSION_OFF)
        if request.safety_check and self.settings.safety_checker == "none":
            notes = notes.with_not_applied("safety_check", NO_CHECKER)
        if request.partial_images and self.checks(request):
            notes = notes.with_not_applied("partial_images", PREVIEWS_UNCHECKED)
        return notes

    def checks(self, request: GenerationRequest) -> bool:
        """Whether the request's pictures are checked (asked for, or forced, and a checker is set)."""
        asked = request.safety_check or self.settings.safety_check_force
        return asked and self.settings.safety_checker != "none"

    def without_unchecked_previews(self, entry: BatchEntry) -> BatchEntry:
        """Previews are not checked (a check per preview would cost a forward each): a checked
        request gets none, so that no picture leaves the server before its check."""
        return dataclasses.replace(entry, on_partial=None) if self.checks(entry.request) else entry

    def extend(self, pipeline: Any, entry: BatchEntry, notes: RequestNotes) -> tuple[BatchEntry, RequestNotes]:
        """`entry` with its prompt translated and extended, as it asks and the server allows."""
        request = entry.request
        if not self.settings.prompt_extension:
            return entry, notes
        prompt = request.prompt
        if request.prompt_translate:
            prompt, notes = self._rewrite(pipeline, "prompt_translate", prompt, (), notes, TRANSLATE_INSTRUCTION)
        if request.prompt_extend:
            pictures = [_input_picture(data, index) for index, data in enumerate(request.images)]
            prompt, notes = self._rewrite(pipeline, "prompt_extend", prompt, pictures, notes, None)
        if prompt == request.prompt:
            return entry, notes
        notes = dataclasses.replace(notes, actual_prompt=prompt)
        return dataclasses.replace(entry, request=request.model_copy(update={"prompt": prompt})), notes

    def _rewrite(
        self,
        pipeline: Any,
        option: str,
        prompt: str,
        pictures: Sequence[Image.Image],
        notes: RequestNotes,
        instruction: str | None,
    ) -> tuple[str, RequestNotes]:
        from qwen_image_server.engine.prompt_extension import extend_prompt

        rewritten = extend_prompt(
            pipeline.text_encoder,
            pipeline.tokenizer,
            prompt,
            images=pictures,
            processor=getattr(pipeline, "processor", None) if pictures else None,
            max_new_tokens=self.settings.prompt_extension_tokens,
            device=pipeline._execution_device,
            instruction=instruction,
        )
        if rewritten is None:
            return prompt, notes.with_not_applied(option, EXTENSION_EMPTY)
        return rewritten, notes.with_applied(option)

    def verdicts(
        self, pipeline: Any, request: GenerationRequest, pictures: Sequence[Image.Image]
    ) -> list[SafetyVerdict]:
        """Per picture, the safety verdict (`NOT_CHECKED` where the request asked for none or the
        server has no checker)."""
        if not self.checks(request):
            return [NOT_CHECKED for _ in pictures]
        from qwen_image_server.engine.safety import flagged

        try:
            scores = self._checker(pipeline).check(list(pictures))
        except QwenImageError as exc:
            log.warning("the safety check failed: %s", exc.message)
            return [SafetyVerdict(None, failed=exc.message) for _ in pictures]
        return [SafetyVerdict(flagged(score, self.settings.safety_threshold), score=score) for score in scores]

    def _checker(self, pipeline: Any) -> Any:
        from qwen_image_server.engine import safety

        if self.settings.safety_checker == "qwen-vl":  # the pipeline's own encoder: nothing to keep
            return safety.VisionLanguageChecker.from_components(pipeline.components, device=pipeline._execution_device)
        if self._classifier is None:
            source = self.settings.safety_checker
            self._classifier = safety.ClassifierChecker.load(source, device=self._device, dtype=self._dtype)
        return self._classifier


def _input_picture(data: bytes, index: int) -> Image.Image:
    from qwen_image_server.images import decode_input_image

    return decode_input_image(data, index=index)
