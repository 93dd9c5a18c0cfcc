"""Decoding input images and encoding output images (Pillow; no torch here).

Input images arrive as bytes from files, URLs, base64 or uploads. Before any work we check that
they decode, are of an accepted format and within pixel limits (guarding against decompression
bombs by reading the header first), then normalise them: EXIF orientation applied, alpha composited
onto white (a transparent area should read as empty canvas, not as whatever colour hides under it),
first frame of an animation, RGB.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from qwen_image_server.errors import InvalidImage

MAX_INPUT_BYTES = 20 * 1024 * 1024
MIN_INPUT_SIDE = 32
MAX_INPUT_SIDE = 8192
MAX_INPUT_PIXELS = 40_000_000
ACCEPTED_INPUT_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "MPO"})


def _param(index: int) -> str:
    return f"images[{index}]"


def _named(index: int, param: str | None) -> tuple[str, str]:
    """(how the message names the picture, the parameter to report)."""
    if param is not None:
        return f"the {param}", param
    return f"input image {index + 1}", _param(index)


def _open(data: bytes, who: tuple[str, str]) -> Image.Image:
    if not data:
        raise InvalidImage(f"{who[0]} is empty", param=who[1])
    if len(data) > MAX_INPUT_BYTES:
        raise InvalidImage(
            f"{who[0]} is {len(data) / 2**20:.1f} MiB; the limit is {MAX_INPUT_BYTES // 2**20} MiB",
            param=who[1],
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning, OSError):
        raise InvalidImage(
            f"{who[0]} is not a readable image (PNG, JPEG, WebP, BMP, TIFF or GIF)",
            param=who[1],
        ) from None
    if image.format not in ACCEPTED_INPUT_FORMATS:
        raise InvalidImage(
            f"{who[0]} is {image.format}; send PNG, JPEG, WebP, BMP, TIFF or GIF",
            param=who[1],
        )
    _check_dimensions(image.size, who)
    return image


def _check_dimensions(size: tuple[int, int], who: tuple[str, str]) -> None:
    width, height = size
    if min(width, height) < MIN_INPUT_SIDE or max(width, height) > MAX_INPUT_SIDE:
        raise InvalidImage(
            f"{who[0]} is {width}x{height}; each side must be {MIN_INPUT_SIDE} to {MAX_INPUT_SIDE} pixels",
            param=who[1],
        )
    if width * height > MAX_INPUT_PIXELS:
        raise InvalidImage(
            f"{who[0]} has {width * height / 1e6:.1f} MP; the limit is {MAX_INPUT_PIXELS / 1e6:.0f} MP",
            param=who[1],
        )


def inspect_input_image(data: bytes, *, index: int = 0, param: str | None = None) -> tuple[int, int]:
    """Check that `data` is an acceptable input image; return its (width, height) upright.
    `param` names it in errors when it is not one of the `images` (e.g. "mask")."""
    image = decode_input_image(data, index=index, param=param)
    return image.size


def decode_input_image(data: bytes, *, index: int = 0, param: str | None = None) -> Image.Image:
    """The input image as an upright RGB picture, or `InvalidImage` saying what is wrong."""
    return _flatten_alpha(_upright(data, _named(index, param)))


def decode_mask(data: bytes) -> Image.Image:
    """An inpainting mask as an upright greyscale picture (white: repaint; black: keep)."""
    return _upright(data, _named(0, "mask")).convert("L")


def _upright(data: bytes, who: tuple[str, str]) -> Image.Image:
    image = _open(data, who)
    try:
        image.seek(0)
        image.load()
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError):
        raise InvalidImage(f"{who[0]} is truncated or corrupt", param=who[1]) from None


def _flatten_alpha(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def encode_image(image: Image.Image, output_format: str, quality: int) -> bytes:
    """Encode an RGB picture as png, jpeg or webp (`quality` 1-100 applies to the lossy two)."""
    buffer = io.BytesIO()
    if output_format == "png":
        image.save(buffer, format="PNG", compress_level=4)  # fast; PNG's size gain past 4 is small
    elif output_format == "jpeg":
        image.save(buffer, format="JPEG", quality=quality, optimize=True)
    elif output_format == "webp":
        image.save(buffer, format="WEBP", quality=quality, method=4)
    else:
        raise ValueError(f"unknown output format {output_format!r}")
    return buffer.getvalue()
