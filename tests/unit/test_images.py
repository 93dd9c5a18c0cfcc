from __future__ import annotations

import io

import pytest
from PIL import Image

from qwen_image_server.errors import InvalidImage
from qwen_image_server.images import decode_input_image, encode_image, inspect_input_image
from tests.conftest import picture_bytes


def test_decodes_to_upright_rgb() -> None:
    image = decode_input_image(picture_bytes((64, 48), (10, 20, 30)))
    assert image.mode == "RGB"
    assert image.size == (64, 48)
    assert image.getpixel((0, 0)) == (10, 20, 30)


def test_exif_orientation_is_applied() -> None:
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.new("RGB", (80, 40), (0, 0, 255)).save(buffer, format="JPEG", exif=exif)
    assert decode_input_image(buffer.getvalue()).size == (40, 80)
    assert inspect_input_image(buffer.getvalue()) == (40, 80)


def test_transparent_pixels_become_white_not_their_hidden_colour() -> None:
    image = decode_input_image(picture_bytes((40, 40), (255, 0, 0, 0), mode="RGBA"))
    assert image.getpixel((5, 5)) == (255, 255, 255)
    opaque = decode_input_image(picture_bytes((40, 40), (255, 0, 0, 255), mode="RGBA"))
    assert opaque.getpixel((5, 5)) == (255, 0, 0)


def test_an_animated_gif_gives_its_first_frame() -> None:
    buffer = io.BytesIO()
    frames = [Image.new("RGB", (40, 40), colour) for colour in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    red, green, _blue = decode_input_image(buffer.getvalue()).getpixel((1, 1))
    assert red > 200 and green < 50


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"hello, I am a text file\n", "not a readable image"),
        (picture_bytes((16, 400)), "32 to 8192"),
        (picture_bytes((200, 200))[:120], "truncated or corrupt"),
    ],
)
def test_bad_images_are_refused_with_a_reason(data: bytes, words: str) -> None:
    with pytest.raises(InvalidImage, match=words):
        decode_input_image(data, index=2)


def test_pixel_bombs_are_refused_before_decoding() -> None:
    huge = picture_bytes((8000, 8000), (0, 0, 0))
    with pytest.raises(InvalidImage, match="MP"):
        decode_input_image(huge)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_encode_writes_the_asked_format(fmt: str) -> None:
    data = encode_image(Image.new("RGB", (32, 16), (1, 2, 3)), fmt, 90)
    reopened = Image.open(io.BytesIO(data))
    assert reopened.format == fmt.upper()
    assert reopened.size == (32, 16)


def test_quality_changes_lossy_output() -> None:
    noise = Image.effect_noise((128, 128), 80).convert("RGB")
    assert len(encode_image(noise, "jpeg", 95)) > len(encode_image(noise, "jpeg", 20))
