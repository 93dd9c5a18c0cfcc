"""The visible watermark: a short, legible text in a corner of the picture, as DashScope puts
"Qwen-Image" on its images when `watermark` is true.

The text is drawn in Pillow's bundled font (Aileron, through FreeType: no font file to ship or find)
at a size that follows the picture's short side, light on a translucent dark plate so that it reads
on any background, a margin away from the corner. Its plate never covers more than `MAX_AREA_SHARE`
of the picture: a long text on a small picture is drawn smaller, down to `MIN_FONT_PIXELS`, and
shortened with an ellipsis when even that is too wide. Drawn after the safety check and before
encoding (and before the invisible mark, which survives it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageDraw, ImageFont

Corner = Literal["bottom-right", "bottom-left", "top-right", "top-left"]
MAX_AREA_SHARE = 0.03  # the bound: never over 3% of the picture
FONT_SHARE = 0.035  # font size as a share of the short side: ~36 px at 1024, ~9 px at 256
MIN_FONT_PIXELS = 9  # below this, Aileron stops being legible
MARGIN_SHARE = 0.02


@dataclass(frozen=True)
class MarkBox:
    """Where the mark went: its plate's box, for tests and for the docs' figures."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def area(self) -> int:
        return (self.right - self.left) * (self.bottom - self.top)


def draw_mark(picture: Image.Image, text: str, corner: Corner = "bottom-right") -> tuple[Image.Image, MarkBox]:
    """A copy of `picture` with `text` in `corner`, and the box it covers."""
    marked = picture.convert("RGBA") if picture.mode not in ("RGB", "RGBA") else picture.copy()
    width, height = marked.size
    font, shown, (text_w, text_h), pad = _fitting_text(text, width, height)
    margin = max(2, round(min(width, height) * MARGIN_SHARE))
    plate_w, plate_h = text_w + 2 * pad, text_h + 2 * pad
    left = width - margin - plate_w if corner.endswith("right") else margin
    top = height - margin - plate_h if corner.startswith("bottom") else margin
    box = MarkBox(left, top, left + plate_w, top + plate_h)
    # Only the plate's region is composed: the rest of the picture is copied as it is.
    region = marked.crop((box.left, box.top, box.right, box.bottom)).convert("RGBA")
    overlay = Image.new("RGBA", region.size, (0, 0, 0, 110))
    ImageDraw.Draw(overlay).text((pad, pad), shown, font=font, fill=(255, 255, 255, 230), anchor="lt")
    plate = Image.alpha_composite(region, overlay)
    marked.paste(plate if marked.mode == "RGBA" else plate.convert(marked.mode), (box.left, box.top))
    return (marked if picture.mode == "RGBA" else marked.convert("RGB")), box


def _fitting_text(
    text: str, width: int, height: int
) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, str, tuple[int, int], int]:
    """The font, the text as drawn and its size, and the plate's padding: as large as the share of
    the short side asks, smaller until the plate fits the area bound, shortened as a last resort."""
    budget = MAX_AREA_SHARE * width * height
    size = max(MIN_FONT_PIXELS, round(min(width, height) * FONT_SHARE))
    shown = text
    while True:
        font = ImageFont.load_default(size=size)
        left, top, right, bottom = font.getbbox(shown, anchor="lt")
        text_w, text_h = int(right - left), int(bottom - top)
        pad = max(2, size // 4)
        if (text_w + 2 * pad) * (text_h + 2 * pad) <= budget and text_w + 2 * pad <= width:
            return font, shown, (text_w, text_h), pad
        if size > MIN_FONT_PIXELS:
            size -= 1
        elif len(shown) > 2:
            shown = shown[:-2].rstrip() + "…"
        else:
            return font, shown, (text_w, text_h), pad
