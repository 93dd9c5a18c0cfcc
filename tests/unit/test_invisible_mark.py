"""The invisible watermark: the payload comes back after PNG, JPEG q75 (4:2:0) and WebP q90 on a
photograph-like and on flat pictures, unmarked pictures read as no mark, the mark lives in luminance
only, and sizes, modes and alpha are handled as documented."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pytest
import pywt  # type: ignore[import-untyped]
from bench.invisible_mark import photo_like
from PIL import Image

from qwen_image_server.provenance import invisible_mark
from qwen_image_server.provenance.invisible_mark import MINIMUM_SIDE, detect, embed, read

PAYLOAD = bytes.fromhex("0123456789abcdef")


def flat(level: int, side: int = 1024) -> Image.Image:
    return Image.new("RGB", (side, side), (level, level, level))


def reencoded(picture: Image.Image, fmt: str, **options: Any) -> Image.Image:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **options)
    return Image.open(io.BytesIO(buffer.getvalue()))


def marked(picture: Image.Image, payload: bytes = PAYLOAD) -> Image.Image:
    result = embed(picture, payload)
    assert result is not None
    return result


def psnr(a: Image.Image, b: Image.Image) -> float:
    difference = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return 10 * math.log10(255**2 / float((difference**2).mean()))


def test_the_payload_survives_a_png_round_trip() -> None:
    original = photo_like(512, 512)
    result = marked(original)
    assert (result.mode, result.size) == ("RGB", (512, 512))
    assert detect(reencoded(result, "PNG")) == PAYLOAD
    assert psnr(result, original) > 40


@pytest.mark.parametrize("name", ["photo", "grey", "near-white"])
def test_the_payload_survives_jpeg_q75_with_chroma_subsampling_at_1024(name: str) -> None:
    original = {"photo": lambda: photo_like(1024, 1024), "grey": lambda: flat(128), "near-white": lambda: flat(250)}
    result = marked(original[name](), b"\xff\x00provnc")
    jpeg = reencoded(result, "JPEG", quality=75)  # Pillow's default subsampling: 4:2:0
    assert jpeg.layer[0][1:3] == (2, 2)  # the luma layer is sampled 2x2 over the chroma: 4:2:0
    assert detect(jpeg) == b"\xff\x00provnc"


@pytest.mark.parametrize("original", [photo_like(1024, 1024), flat(128)], ids=["photo", "grey"])
def test_the_payload_survives_webp_q90(original: Image.Image) -> None:
    assert detect(reencoded(marked(original), "WEBP", quality=90)) == PAYLOAD


def test_the_mark_is_faint_on_a_flat_picture() -> None:
    original = flat(128, 512)
    result = marked(original)
    change = np.asarray(result, dtype=np.int16) - 128
    assert psnr(result, original) > 44
    assert np.abs(change).max() <= 6  # a grain of a few levels, not a visible pattern


def test_the_mark_changes_luminance_only() -> None:
    original = photo_like(512, 512, seed=3)
    before = np.asarray(original.convert("YCbCr"), dtype=np.int16)
    after = np.asarray(marked(original).convert("YCbCr"), dtype=np.int16)
    assert np.abs(after[..., 0] - before[..., 0]).max() >= 3
    chroma_change = np.abs(after[..., 1:] - before[..., 1:])
    assert np.mean(chroma_change <= 1) > 0.99  # only 8-bit rounding (and clipping at the extremes)


@pytest.mark.parametrize(
    "original",
    [photo_like(1024, 1024, seed=7), flat(128), flat(250), flat(0, 512), flat(255, 512), photo_like(600, 400, seed=9)],
    ids=["photo", "grey", "near-white", "black", "white", "small-photo"],
)
def test_an_unmarked_picture_reads_as_no_mark(original: Image.Image) -> None:
    reading = read(reencoded(original, "JPEG", quality=75))
    assert reading is not None and reading.payload is None
    assert reading.strength < invisible_mark.MINIMUM_VOTE_STRENGTH
    assert detect(original) is None


def test_a_picture_below_the_minimum_is_left_unmarked() -> None:
    assert embed(photo_like(MINIMUM_SIDE - 1, 400), PAYLOAD) is None
    assert detect(photo_like(MINIMUM_SIDE - 1, 400)) is None
    smallest = photo_like(MINIMUM_SIDE, MINIMUM_SIDE)
    assert detect(reencoded(marked(smallest), "JPEG", quality=75)) == PAYLOAD


def test_odd_sizes_and_aspect_ratios_work() -> None:
    original = photo_like(1000, 777, seed=5)
    result = marked(original)
    assert result.size == (1000, 777)
    # The right and bottom strips that fill no 8x8 cell are left as they were.
    assert np.array_equal(np.asarray(result)[776:], np.asarray(original)[776:])
    assert detect(reencoded(result, "JPEG", quality=75)) == PAYLOAD


def test_alpha_is_kept_and_greyscale_stays_greyscale() -> None:
    rgba = photo_like(512, 512).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((512, 512)))
    result = marked(rgba)
    assert result.mode == "RGBA"
    assert np.array_equal(np.asarray(result.getchannel("A")), np.asarray(rgba.getchannel("A")))
    assert detect(result) == PAYLOAD

    grey = marked(photo_like(512, 512).convert("L"))
    assert grey.mode == "L" and detect(reencoded(grey, "JPEG", quality=75)) == PAYLOAD


def test_a_palette_picture_is_marked_in_colour() -> None:
    result = marked(photo_like(512, 512).convert("P"))
    assert result.mode == "RGB" and detect(result) == PAYLOAD


def test_another_payload_length_is_refused() -> None:
    with pytest.raises(ValueError, match="8 bytes"):
        embed(flat(128), b"short")


def test_each_payload_reads_as_itself() -> None:
    original = photo_like(512, 512, seed=11)
    for payload in (bytes(8), b"\xff" * 8, b"qwen-img"):
        assert detect(marked(original, payload)) == payload


def test_the_cell_patterns_are_the_dct_of_the_haar_ll_band() -> None:
    """The documented scheme (Haar DWT, then a 4x4 DCT of the LL band) computed the long way agrees
    with the one-projection shortcut the module uses."""
    luma = np.random.default_rng(0).uniform(0, 255, (64, 48)).astype(np.float32)
    low, _ = pywt.dwt2(luma, "haar")
    k, n = np.arange(4)[:, None], np.arange(4)[None, :]
    dct = np.sqrt(2 / 4) * np.cos(np.pi * (2 * n + 1) * k / 8)
    dct[0] /= np.sqrt(2)
    blocks = np.einsum("ab,ibjc,dc->ijad", dct, low.reshape(8, 4, 6, 4), dct)
    expected = np.stack([blocks[..., 0, 1], blocks[..., 1, 0], blocks[..., 1, 1]], axis=-1)
    np.testing.assert_allclose(invisible_mark._coefficients(luma), expected, atol=1e-3)
