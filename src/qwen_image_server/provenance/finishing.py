"""Everything done to a picture between the pipeline and the client, in this order:

1. the safety verdict (made by the engine) acted on: a flagged picture is withheld (not encoded at
   all) or blurred, or only reported, as `nsfw_action` says;
2. the visible watermark, where the request asks for it (DashScope's `watermark`) or the server
   forces it (`watermark_force`);
3. the invisible mark in the luminance (`invisible_watermark`): a hash of this server's id and one of
   the image's recipe (the request as one image of its seed), 4 bytes each, for finished images
   (previews are transient and skip it). The recipe, not the task: the same request makes the same
   pixels on the same server, as before marks existed, and image i of a request carries the mark of
   a one-image request with its seed (a one-level rounding difference between batched and lone rows
   can grow to a few levels where it tips a quantized coefficient);
4. encoding (PNG, JPEG or WebP);
5. the C2PA manifest (`c2pa`), signed over the encoded bytes; an edit's inputs are its ingredients.

What was applied goes into the image's `RequestNotes` (and so into the task's report); an option the
server turned off is never silently dropped: the request is told (engine.py adds `not_applied`).
`Finishing` is made once per engine (the C2PA signer is set up and tried at start).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from PIL import Image, ImageFilter

from qwen_image_server.domain import GenerationRequest, ImageResult
from qwen_image_server.images import encode_image
from qwen_image_server.provenance.visible_mark import draw_mark
from qwen_image_server.report import NO_NOTES, RequestNotes

if TYPE_CHECKING:
    from collections.abc import Callable

    from qwen_image_server.provenance.c2pa_manifest import ProvenanceSigner
    from qwen_image_server.settings import Settings

log = logging.getLogger(__name__)

WITHHELD_FLAGGED = "flagged by the safety checker"
# Fields of a request that do not change an image's pixels, or are the image's own seed instead.
_NOT_RECIPE = {
    *("images", "mask", "seed", "num_images_per_prompt", "partial_images", "output_format", "output_quality"),
    "not_applied",  # what acceptance noted; also keeps the recipe of every request as it was before the field
}
BLUR_SHARE = 0.04  # the blur radius as a share of the long side: nothing recognisable is left


@dataclass(frozen=True)
class SafetyVerdict:
    """The safety checker's word on one picture: flagged or not; `failed` when it could not tell."""

    nsfw: bool | None  # None: not checked
    failed: str | None = None  # why the check failed (the picture is then withheld or delivered unchecked)
    score: float | None = None  # the checker's probability that it is NSFW


NOT_CHECKED = SafetyVerdict(None)


class Finishing:
    """Applies the server's settings to each picture (see the module docstring)."""

    def __init__(self, settings: Settings, model_version: Callable[[str], str]) -> None:
        self.settings = settings
        self._model_version = model_version
        self._server_tag = hashlib.sha256(settings.server_id.encode()).digest()[:4]
        self._signer = _signer(settings) if settings.c2pa else None
        if not settings.c2pa:
            log.info("C2PA manifests are off (setting c2pa=false)")
        if not settings.invisible_watermark:
            log.info("the invisible watermark is off (setting invisible_watermark=false)")

    def finish(
        self,
        request: GenerationRequest,
        picture: Image.Image,
        index: int,
        seed: int,
        *,
        partial_index: int | None = None,
        verdict: SafetyVerdict = NOT_CHECKED,
        notes: RequestNotes = NO_NOTES,
    ) -> ImageResult:
        applied: list[str] = []
        if verdict.failed is not None:
            notes = notes.with_not_applied("safety_check", verdict.failed)
        flagged = verdict.nsfw and self.settings.nsfw_action == "withhold"
        if flagged or (verdict.failed and self.settings.safety_fail_closed):
            why = WITHHELD_FLAGGED if verdict.nsfw else f"the safety check failed ({verdict.failed})"
            return self._withheld(request, picture, index, seed, partial_index, notes, verdict, why)
        if verdict.nsfw and self.settings.nsfw_action == "blur":
            picture = picture.filter(ImageFilter.GaussianBlur(BLUR_SHARE * max(picture.size)))
            applied.append("safety_blur")
        if request.watermark or self.settings.watermark_force:
            picture, _ = draw_mark(picture, self.settings.watermark_text, self.settings.watermark_position)
            applied.append("watermark")
        if self.settings.invisible_watermark and partial_index is None:
            # Imported only when a mark is made: PyWavelets, like c2pa, is not needed without (the GPU
            # benchmarks' machine has neither).
            from qwen_image_server.provenance import invisible_mark

            marked = invisible_mark.embed(picture, self.payload(request, seed))
            if marked is not None:  # None: too small to carry it (C2PA still marks it)
                picture = marked
                applied.append("invisible_watermark")
        data = encode_image(picture.convert("RGB"), request.output_format.value, request.output_quality)
        if self._signer is not None:
            data = self._sign(data, request, index, partial_index)
            applied.append("c2pa")
        return ImageResult(
            data=data,
            output_format=request.output_format,
            width=picture.width,
            height=picture.height,
            seed=seed,
            index=index,
            partial_index=partial_index,
            notes=notes.with_applied(*applied),
            nsfw=verdict.nsfw,
            nsfw_score=verdict.score,
        )

    def payload(self, request: GenerationRequest, seed: int) -> bytes:
        """The invisible mark's 8 bytes: this server's id and the image's recipe, each as a 4-byte hash.
        The recipe is the request as one image of `seed` (so image i of a request and a one-image
        request with its seed still make the same pixels), without how it is encoded."""
        recipe = request.model_dump_json(exclude=_NOT_RECIPE) + f"#{seed}"
        return self._server_tag + hashlib.sha256(recipe.encode()).digest()[:4]

    def _sign(self, data: bytes, request: GenerationRequest, index: int, partial_index: int | None) -> bytes:
        assert self._signer is not None
        what = "preview" if partial_index is not None else "image"
        from qwen_image_server.provenance.c2pa_manifest import as_ingredient

        parents = [as_ingredient(image) for image in request.images]
        return self._signer.sign(
            data,
            request.output_format.content_type,
            model=request.model.value,
            model_version=self._model_version(request.model.value),
            title=f"{request.model.value} {what} {index + 1}",
            parents=parents,
        )

    @staticmethod
    def _withheld(
        request: GenerationRequest,
        picture: Image.Image,
        index: int,
        seed: int,
        partial_index: int | None,
        notes: RequestNotes,
        verdict: SafetyVerdict,
        why: str,
    ) -> ImageResult:
        result = ImageResult(b"", request.output_format, picture.width, picture.height, seed, index, partial_index)
        return replace(result, notes=notes, nsfw=verdict.nsfw, withheld=why, nsfw_score=verdict.score)


def _signer(settings: Settings) -> ProvenanceSigner:
    from qwen_image_server.provenance.c2pa_manifest import ProvenanceSigner

    return ProvenanceSigner(settings.data_dir / "c2pa", settings.c2pa_cert, settings.c2pa_key)
