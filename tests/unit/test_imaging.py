"""daemon.imaging: decoding odd inputs to 8-bit RGB(A); and the default profile's output
(the `[engine]` keys) as daemon.rendering composes it, exactly as before profiles. No model."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from daemon.errors import PermanentItemError
from daemon.imaging import combined_alpha, decode_image, to_8bit
from daemon.models import Cutout, CutoutOptions, Mode, OutputFormat, OutputSpec, Rgb
from daemon.rendering import render

RED = (210, 40, 30)
BACKDROP = (225, 225, 225)


def scene(size: tuple[int, int] = (160, 120)) -> tuple[Image.Image, Image.Image]:
    """A red disc on a light grey backdrop, and its exact mask."""
    image = Image.new("RGB", size, BACKDROP)
    mask = Image.new("L", size, 0)
    box = (size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] * 3 // 4)
    ImageDraw.Draw(image).ellipse(box, fill=RED)
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    return image, mask


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def handmade_png(width: int, height: int, depth: int, colour_type: int, rows: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def opened(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()


def format_of(data: bytes) -> str | None:
    with Image.open(io.BytesIO(data)) as image:
        return image.format


# ---------------------------------------------------------------- decode_image


def test_jpeg_decodes_to_rgb_at_full_size() -> None:
    image, _ = scene((200, 150))
    decoded = decode_image(encoded(image, "JPEG", quality=95))
    assert (decoded.mode, decoded.size) == ("RGB", (200, 150))


def test_exif_orientation_is_applied() -> None:
    stored = Image.new("RGB", (200, 100), (255, 0, 0))
    stored.paste((0, 0, 255), (100, 0, 200, 100))  # left red, right blue as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    decoded = decode_image(encoded(stored, "JPEG", quality=95, exif=exif.tobytes()))
    assert decoded.size == (100, 200)
    top, bottom = decoded.getpixel((50, 20)), decoded.getpixel((50, 180))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 and top[2] < 60  # the stored left (red) is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_cmyk_jpeg_becomes_rgb_with_the_right_colours() -> None:
    cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))  # pure red in CMYK
    decoded = decode_image(encoded(cmyk, "JPEG", quality=95))
    assert decoded.mode == "RGB"
    red, green, blue = np.asarray(decoded)[32, 32]
    assert red > 200 and green < 60 and blue < 60


def test_palette_png_with_transparency_becomes_rgba() -> None:
    image, mask = scene()
    rgba = image.convert("RGBA")
    rgba.putalpha(mask)
    palette = rgba.quantize(colors=16, method=Image.Quantize.FASTOCTREE)
    assert palette.mode == "P"
    decoded = decode_image(encoded(palette, "PNG"))
    assert decoded.mode == "RGBA"
    assert decoded.getchannel("A").getpixel((2, 2)) == 0
    assert decoded.getchannel("A").getpixel((80, 60)) == 255


def test_palette_png_without_transparency_becomes_rgb() -> None:
    image, _ = scene()
    decoded = decode_image(encoded(image.quantize(colors=8), "PNG"))
    assert decoded.mode == "RGB"
    assert decoded.getpixel((80, 60)) == pytest.approx(RED, abs=12)


def test_16_bit_grey_png_is_scaled_not_clipped() -> None:
    ramp = np.tile(np.array([0, 256, 32896, 65535], dtype=np.uint16), (4, 1))
    source = Image.fromarray(ramp)
    assert source.mode == "I;16"
    decoded = decode_image(encoded(source, "PNG"))
    assert decoded.mode == "RGB"
    assert np.asarray(decoded)[0, :, 0].tolist() == [0, 1, 128, 255]


def test_16_bit_rgb_png_becomes_8_bit_rgb() -> None:
    row = struct.pack(">6H", 65535, 32896, 0, 0, 0, 65535)  # two pixels: orange, blue
    data = handmade_png(2, 1, 16, 2, b"\x00" + row)
    decoded = decode_image(data)
    assert decoded.mode == "RGB"
    assert np.asarray(decoded)[0].tolist() == [[255, 128, 0], [0, 0, 255]]


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [
        ("I", np.array([[0, 255, 65535]], dtype=np.int32), [0, 1, 255]),
        ("F", np.array([[0.0, 0.5, 1.0]], dtype=np.float32), [0, 128, 255]),
    ],
)
def test_32_bit_modes_become_8_bit(mode: str, values: np.ndarray, expected: list[int]) -> None:
    image = Image.fromarray(values)
    assert image.mode == mode
    assert np.asarray(to_8bit(image))[0, :, 0].tolist() == expected


def test_greyscale_with_alpha_keeps_its_alpha() -> None:
    grey = Image.new("LA", (20, 20), (128, 255))
    grey.paste((128, 0), (0, 0, 10, 20))
    decoded = decode_image(encoded(grey, "PNG"))
    assert decoded.mode == "RGBA"
    assert decoded.getpixel((2, 2)) == (128, 128, 128, 0)
    assert decoded.getpixel((15, 2)) == (128, 128, 128, 255)


def test_greyscale_becomes_rgb() -> None:
    decoded = decode_image(encoded(Image.new("L", (10, 10), 77), "PNG"))
    assert (decoded.mode, decoded.getpixel((5, 5))) == ("RGB", (77, 77, 77))


def test_rgba_png_keeps_alpha() -> None:
    image, mask = scene()
    rgba = image.convert("RGBA")
    rgba.putalpha(mask)
    decoded = decode_image(encoded(rgba, "PNG"))
    assert decoded.mode == "RGBA"
    assert np.array_equal(np.asarray(decoded.getchannel("A")), np.asarray(mask))


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animations_give_their_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (40, 40), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    data = encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)
    decoded = decode_image(data)
    assert decoded.size == (40, 40)
    red, _, blue = np.asarray(decoded.convert("RGB"))[20, 20]
    assert red > 200 and blue < 60


def test_empty_file_is_a_permanent_error() -> None:
    with pytest.raises(PermanentItemError, match=r"empty file \(0 bytes\)"):
        decode_image(b"")


def test_text_is_not_an_image() -> None:
    with pytest.raises(PermanentItemError, match="not an image"):
        decode_image(b"this is a text file named photo.png\n")


def test_heic_is_named_as_unsupported() -> None:
    ftyp = struct.pack(">I", 24) + b"ftypheic" + struct.pack(">I", 0) + b"mif1heic"
    with pytest.raises(PermanentItemError, match="unsupported image format HEIC/HEIF"):
        decode_image(ftyp + b"\x00" * 64)


def test_truncated_jpeg_is_reported_as_truncated() -> None:
    image, _ = scene((300, 200))
    data = encoded(image, "JPEG", quality=95)
    with pytest.raises(PermanentItemError, match="truncated or corrupt image"):
        decode_image(data[: len(data) // 2])


def test_decompression_bomb_is_refused_before_decoding() -> None:
    header_only = handmade_png(20_000, 20_000, 8, 2, b"\x00" * 16)  # 400 MP claimed
    with pytest.raises(PermanentItemError, match="decompression bomb"):
        decode_image(header_only)


def test_pixel_limit_names_the_dimensions() -> None:
    image, _ = scene((400, 300))
    with pytest.raises(PermanentItemError, match=r"400x300 \(0\.1 MP\).*0\.1 MP limit"):
        decode_image(encoded(image, "PNG"), max_pixels=100_000)


# ---------------------------------------------------------------- the default profile's output


def compose_output(image: Image.Image, mask: Image.Image, options: CutoutOptions) -> bytes:
    """What the engine and the default profile make of an input and the model's mask."""
    return render(Cutout(image, combined_alpha(image, mask)), OutputSpec.from_options(options))


def test_cutout_png_uses_the_mask_as_alpha_and_clears_hidden_pixels() -> None:
    image, mask = scene()
    data = compose_output(image, mask, CutoutOptions())
    out = opened(data)
    assert (format_of(data), out.mode, out.size) == ("PNG", "RGBA", image.size)
    assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(mask))
    assert out.getpixel((80, 60)) == (*RED, 255)
    assert out.getpixel((1, 1)) == (0, 0, 0, 0)


def test_input_alpha_is_multiplied_into_the_mask() -> None:
    image, _ = scene()
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.new("L", image.size, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 80, 120))  # left half fully transparent
    full = Image.new("L", image.size, 200)
    alpha = np.asarray(opened(compose_output(rgba, full, CutoutOptions())).getchannel("A"))
    assert (alpha[:, :80] == 0).all()
    assert (alpha[:, 80:] == 200).all()


def test_mask_mode_returns_the_greyscale_mask() -> None:
    image, mask = scene()
    out = opened(compose_output(image, mask, CutoutOptions(mode=Mode.MASK)))
    assert out.mode == "L"
    assert np.array_equal(np.asarray(out), np.asarray(mask))


def test_trim_crops_to_the_subject() -> None:
    image, mask = scene((200, 100))
    out = opened(compose_output(image, mask, CutoutOptions(trim=True)))
    assert out.size == (101, 51)  # the disc's box, edges included: 50..150 x 25..75


def test_trim_keeps_the_full_frame_when_nothing_is_visible() -> None:
    image, _ = scene()
    faint = Image.new("L", image.size, 3)  # below the trim threshold everywhere
    out = opened(compose_output(image, faint, CutoutOptions(trim=True)))
    assert out.size == image.size


def test_background_colour_fills_behind_the_subject() -> None:
    image, mask = scene()
    options = CutoutOptions(background_color=Rgb(0, 128, 255))
    out = opened(compose_output(image, mask, options))
    assert out.mode == "RGB"
    assert out.getpixel((1, 1)) == (0, 128, 255)
    assert out.getpixel((80, 60)) == RED


def test_trim_and_mask_mode_combine() -> None:
    image, mask = scene((200, 100))
    out = opened(compose_output(image, mask, CutoutOptions(mode=Mode.MASK, trim=True)))
    assert (out.mode, out.size) == ("L", (101, 51))


def test_webp_keeps_alpha() -> None:
    image, mask = scene()
    data = compose_output(image, mask, CutoutOptions(output_format=OutputFormat.WEBP))
    out = opened(data)
    assert (format_of(data), out.mode, out.size) == ("WEBP", "RGBA", image.size)
    alpha = np.asarray(out.getchannel("A")).astype(int)
    assert np.abs(alpha - np.asarray(mask)).mean() < 3


def test_mask_of_another_size_is_refused() -> None:
    image, _ = scene()
    with pytest.raises(ValueError, match="alpha size"):
        render(Cutout(image, Image.new("L", (10, 10))), OutputSpec())
