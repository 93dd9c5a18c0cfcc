from __future__ import annotations

import io

import pytest
from PIL import Image

from qwen_image_server.errors import InvalidImage
from qwen_image_server.images import (
    MAX_INPUT_FRAMES,
    count_gif_frames,
    decode_input_image,
    encode_image,
    inspect_input_image,
)
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


def animation(frames: int, fmt: str, size: tuple[int, int] = (40, 40)) -> bytes:
    """An animation whose frames all differ (encoders merge identical neighbours); first frame red."""
    pictures = [Image.new("RGB", size, (255 - i % 200, i % 200, (7 * i) % 256)) for i in range(frames)]
    buffer = io.BytesIO()
    pictures[0].save(buffer, format=fmt, save_all=True, append_images=pictures[1:], duration=40)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP", "TIFF"])
def test_animations_up_to_the_frame_limit_give_their_first_frame(fmt: str) -> None:
    data = animation(MAX_INPUT_FRAMES, fmt)
    assert Image.open(io.BytesIO(data)).n_frames == MAX_INPUT_FRAMES
    red, green, _blue = decode_input_image(data).getpixel((1, 1))
    assert red > 200 and green < 50


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP", "TIFF"])
def test_one_frame_over_the_limit_is_refused_naming_the_limit(fmt: str) -> None:
    data = animation(MAX_INPUT_FRAMES + 1, fmt)
    words = "input image 2 has (101|more than 100) frames; the limit is 100"
    with pytest.raises(InvalidImage, match=words) as refused:
        decode_input_image(data, index=1)
    assert refused.value.param == "images[1]"


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_formats_that_declare_their_frames_are_refused_with_the_exact_count(fmt: str) -> None:
    with pytest.raises(InvalidImage, match="has 150 frames"):
        inspect_input_image(animation(150, fmt))


def test_gif_frames_are_counted_as_pillow_counts_them_and_the_walk_stops_at_the_cap() -> None:
    for frames in (1, 2, 37, 101):
        data = animation(frames, "GIF", size=(33, 35))
        assert count_gif_frames(data, stop_after=1000) == Image.open(io.BytesIO(data)).n_frames == frames
    long = animation(2000, "GIF", size=(32, 32))
    assert count_gif_frames(long, stop_after=MAX_INPUT_FRAMES + 1) == MAX_INPUT_FRAMES + 1
    with pytest.raises(InvalidImage, match="more than 100 frames"):
        decode_input_image(long)


def test_stray_bytes_between_gif_blocks_do_not_hide_frames() -> None:
    data = animation(3, "GIF")
    second_frame = data.index(b"\x21\xf9", data.index(b"\x2c"))  # the graphic control block of frame 2
    padded = data[:second_frame] + b"\x00\x00" + data[second_frame:]
    assert count_gif_frames(padded, stop_after=10) == Image.open(io.BytesIO(padded)).n_frames == 3


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


def test_png_keeps_every_pixel_and_compresses_smooth_pictures() -> None:
    noise = Image.merge("RGB", [Image.effect_noise((96, 64), sigma) for sigma in (20, 60, 120)])
    assert Image.open(io.BytesIO(encode_image(noise, "png", 90))).tobytes() == noise.tobytes()
    gradient = Image.linear_gradient("L").resize((256, 256)).convert("RGB")
    data = encode_image(gradient, "png", 90)
    assert Image.open(io.BytesIO(data)).tobytes() == gradient.tobytes()
    assert len(data) < len(gradient.tobytes()) / 20, "the run-length strategy still compresses"
