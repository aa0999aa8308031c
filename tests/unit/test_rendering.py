"""daemon.rendering: the geometry each output key promises, measured on generated products
with known masks; colour (ICC conversion, sRGB tags); no fringes."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageDraw

from daemon.errors import PermanentItemError
from daemon.imaging import decode_image
from daemon.models import (
    Align,
    Cutout,
    EncodedCutout,
    Mode,
    OutputFormat,
    OutputSpec,
    Padding,
    Rgb,
)
from daemon.rendering import decoded, render

PRODUCT = (200, 40, 30)
BACKDROP = (230, 230, 230)


def product(
    size: tuple[int, int] = (1200, 900), box: tuple[int, int, int, int] = (300, 150, 700, 750)
) -> Cutout:
    """A red rectangle (the product) on a grey backdrop, with its exact mask and a few
    stray faint pixels far away (alpha 5: below the subject threshold)."""
    image = Image.new("RGB", size, BACKDROP)
    alpha = Image.new("L", size, 0)
    ImageDraw.Draw(image).rectangle(box, fill=PRODUCT)
    ImageDraw.Draw(alpha).rectangle(box, fill=255)
    alpha.putpixel((5, 5), 5)
    alpha.putpixel((size[0] - 3, size[1] - 3), 6)
    return Cutout(image, alpha)


def opened(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        copy = image.copy()
        copy.format = image.format
        return copy


def subject_box(picture: Image.Image) -> tuple[int, int, int, int]:
    """The box of pixels that are clearly product: opaque alpha, or far from the background."""
    pixels = np.asarray(picture.convert("RGBA")).astype(int)
    if picture.mode == "RGBA":
        visible = pixels[:, :, 3] > 127
    else:
        visible = np.abs(pixels[:, :, :3] - np.array([255, 255, 255])).sum(axis=2) > 150
    rows, columns = np.nonzero(visible.any(axis=1))[0], np.nonzero(visible.any(axis=0))[0]
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


def test_canvas_size_fill_centring_and_pure_background() -> None:
    spec = OutputSpec(format=OutputFormat.JPEG, canvas=(2000, 2000), fill=0.85)
    out = opened(render(product(), spec))
    assert (out.format, out.mode, out.size) == ("JPEG", "RGB", (2000, 2000))
    left, top, right, bottom = subject_box(out)
    width, height = right - left, bottom - top
    assert abs(max(width, height) / 2000 - 0.85) <= 0.01  # the limiting side (height)
    assert abs(width / height - 401 / 601) <= 0.01  # proportions kept
    assert abs((left + right) / 2 - 1000) <= 20 and abs((top + bottom) / 2 - 1000) <= 20
    pixels = np.asarray(out)
    margins = [
        pixels[: top - 8],
        pixels[bottom + 8 :],
        pixels[:, : left - 8],
        pixels[:, right + 8 :],
    ]
    for margin in margins:
        assert (margin == 255).all()  # exactly white away from the subject


def test_canvas_wide_product_is_limited_by_its_width() -> None:
    cutout = product((1600, 800), box=(100, 300, 1499, 499))
    out = opened(render(cutout, OutputSpec(canvas=(1000, 1500), fill=0.9)))
    left, top, right, bottom = subject_box(out)
    assert out.size == (1000, 1500)
    assert abs((right - left) / 1000 - 0.9) <= 0.01
    assert abs((top + bottom) / 2 - 750) <= 15


def test_canvas_bottom_alignment_rests_on_the_bottom_margin() -> None:
    spec = OutputSpec(canvas=(1000, 1000), fill=0.8, align=Align.BOTTOM)
    out = opened(render(product((900, 900), box=(300, 100, 599, 399)), spec))
    left, top, right, bottom = subject_box(out)
    assert abs((bottom - top) / 1000 - 0.8) <= 0.01
    assert abs((1000 - bottom) - 100) <= 10  # (1 - fill) / 2 of the side
    assert abs((left + right) / 2 - 500) <= 10


def test_trim_ignores_stray_pixels_and_pads_in_pixels_and_percent() -> None:
    cutout = product()  # subject 401 x 601; stray alpha-5/6 pixels in the corners
    trimmed = opened(render(cutout, OutputSpec(trim=True)))
    assert trimmed.size == (401, 601)
    px = opened(render(cutout, OutputSpec(trim=True, padding=Padding(40))))
    assert px.size == (481, 681)
    assert subject_box(px) == (40, 40, 441, 641)
    percent = opened(render(cutout, OutputSpec(trim=True, padding=Padding(5, percent=True))))
    pad = round(0.05 * 601)
    assert percent.size == (401 + 2 * pad, 601 + 2 * pad)
    assert np.asarray(percent.getchannel("A"))[:pad].max() == 0


def test_aspect_pads_the_trimmed_subject_to_the_ratio() -> None:
    spec = OutputSpec(format=OutputFormat.WEBP, aspect=(4, 3), padding=Padding(10))
    out = opened(render(product(), spec))
    width, height = out.size
    assert abs(width / height - 4 / 3) <= 0.01
    assert height == 601 + 20
    left, top, right, bottom = subject_box(out)
    assert abs((left + right) / 2 - width / 2) <= 0.01 * width
    assert (right - left, bottom - top) == pytest.approx((401, 601), abs=2)


def test_max_side_downscales_and_never_upscales() -> None:
    out = opened(render(product(), OutputSpec(max_side=600)))
    assert out.size == (600, 450)
    small = opened(render(product(), OutputSpec(max_side=5000)))
    assert small.size == (1200, 900)
    both = opened(render(product(), OutputSpec(trim=True, aspect=(1, 1), max_side=300)))
    assert both.size == (300, 300)


def test_mask_mode_with_canvas() -> None:
    out = opened(render(product(), OutputSpec(mode=Mode.MASK, canvas=(500, 500))))
    assert (out.mode, out.size) == ("L", (500, 500))
    assert np.asarray(out)[0].max() == 0 and np.asarray(out)[250, 250] == 255


def test_background_colour_in_png_and_jpeg() -> None:
    color = Rgb(0, 128, 255)
    png = opened(
        render(product(), OutputSpec(trim=True, padding=Padding(30), background_color=color))
    )
    assert png.mode == "RGB" and png.getpixel((2, 2)) == (0, 128, 255)
    spec = OutputSpec(format=OutputFormat.JPEG, canvas=(800, 800), background_color=color)
    jpeg = np.asarray(opened(render(product(), spec))).astype(int)
    assert np.abs(jpeg[:40] - (0, 128, 255)).max() <= 1  # JPEG's YCbCr rounding at most


def test_scaling_leaves_no_fringe_on_transparent_edges() -> None:
    """A white product on a black backdrop: resampled without premultiplying, the edge
    pixels would darken towards the black that the mask removed."""
    image = Image.new("RGB", (1000, 1000), (0, 0, 0))
    alpha = Image.new("L", (1000, 1000), 0)
    ImageDraw.Draw(image).ellipse((200, 200, 800, 800), fill=(255, 255, 255))
    ImageDraw.Draw(alpha).ellipse((200, 200, 800, 800), fill=255)
    out = opened(render(Cutout(image, alpha), OutputSpec(canvas=(333, 333), fill=0.9)))
    pixels = np.asarray(out).astype(int)
    partial = (pixels[:, :, 3] > 10) & (pixels[:, :, 3] < 245)
    assert partial.sum() > 100  # there are soft edge pixels
    assert pixels[partial][:, :3].min() >= 250  # and they stay white

    flat = opened(
        render(Cutout(image, alpha), OutputSpec(format=OutputFormat.JPEG, canvas=(333, 333)))
    )
    edge = np.asarray(flat).astype(int)[partial]
    assert edge.min() >= 240  # white on white: no dark halo


def test_jpeg_and_webp_carry_srgb_and_png_stays_untagged() -> None:
    for fmt in (OutputFormat.JPEG, OutputFormat.WEBP):
        out = opened(render(product(), OutputSpec(format=fmt, trim=True)))
        profile = ImageCms.ImageCmsProfile(io.BytesIO(out.info["icc_profile"]))
        assert "sRGB" in profile.profile.profile_description
    assert "icc_profile" not in opened(render(product(), OutputSpec())).info


# ------------------------------------------------------------------ ICC: Adobe RGB (1998)

ADOBE_PRIMARIES = ((0.64, 0.33), (0.21, 0.71), (0.15, 0.06))
D65 = (0.3127, 0.3290)
ADOBE_GAMMA = 563 / 256  # 2.19921875, as Adobe's profile stores it


def _xyz(xy: tuple[float, float]) -> np.ndarray:
    x, y = xy
    return np.array([x / y, 1.0, (1 - x - y) / y])


def _rgb_to_xyz(
    primaries: tuple[tuple[float, float], ...], white: tuple[float, float]
) -> np.ndarray:
    columns = np.stack([_xyz(p) for p in primaries], axis=1)
    scale = np.linalg.solve(columns, _xyz(white))
    return columns * scale


BRADFORD = np.array(
    [[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]]
)
D50_XYZ = np.array([0.9642, 1.0, 0.8249])


def _to_d50(matrix: np.ndarray) -> np.ndarray:
    cone_src, cone_dst = BRADFORD @ _xyz(D65), BRADFORD @ D50_XYZ
    adapt = np.linalg.inv(BRADFORD) @ np.diag(cone_dst / cone_src) @ BRADFORD
    return adapt @ matrix


def adobe_rgb_icc() -> bytes:
    """A v2 matrix/TRC ICC profile for Adobe RGB (1998), built here byte by byte."""
    colorants = _to_d50(_rgb_to_xyz(ADOBE_PRIMARIES, D65))

    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    def xyz_tag(values: np.ndarray) -> bytes:
        return b"XYZ \0\0\0\0" + b"".join(s15(v) for v in values)

    text = b"Adobe RGB (1998) test"
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(text) + 1) + text + b"\0" + b"\0" * 79
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(ADOBE_GAMMA * 256)) + b"\0\0"
    tags = [(b"desc", desc), (b"wtpt", xyz_tag(D50_XYZ)), (b"cprt", b"text\0\0\0\0none\0")]
    tags += [(name, xyz_tag(colorants[:, i])) for i, name in enumerate((b"rXYZ", b"gXYZ", b"bXYZ"))]
    tags += [(name, curve) for name in (b"rTRC", b"gTRC", b"bTRC")]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for name, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += name + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = struct.pack(">I4sI4s4s4s", size, b"none", 0x02100000, b"mntr", b"RGB ", b"XYZ ")
    header += b"\0" * 12 + b"acsp" + b"\0" * 24 + s15(0.9642) + s15(1.0) + s15(0.8249)
    header += b"\0" * (128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + body


def srgb_from_adobe(rgb: tuple[int, int, int]) -> np.ndarray:
    """The reference: Adobe RGB -> XYZ (D65) -> sRGB by the published formulas."""
    linear = (np.array(rgb) / 255) ** ADOBE_GAMMA
    xyz = _rgb_to_xyz(ADOBE_PRIMARIES, D65) @ linear
    srgb_linear = np.linalg.solve(_rgb_to_xyz(((0.64, 0.33), (0.30, 0.60), (0.15, 0.06)), D65), xyz)
    encoded = np.where(
        srgb_linear <= 0.0031308, 12.92 * srgb_linear, 1.055 * srgb_linear ** (1 / 2.4) - 0.055
    )
    return np.clip(encoded, 0, 1) * 255


def lab(srgb: np.ndarray) -> np.ndarray:
    linear = np.where(
        srgb / 255 <= 0.04045, srgb / 255 / 12.92, ((srgb / 255 + 0.055) / 1.055) ** 2.4
    )
    xyz = _rgb_to_xyz(((0.64, 0.33), (0.30, 0.60), (0.15, 0.06)), D65) @ linear / _xyz(D65)
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_wide_gamut_input_is_converted_to_srgb_keeping_the_colour() -> None:
    patch = (110, 170, 120)  # a green inside sRGB that Adobe RGB encodes very differently
    source = Image.new("RGB", (64, 64), patch)
    buffer = io.BytesIO()
    source.save(buffer, "JPEG", quality=100, subsampling=0, icc_profile=adobe_rgb_icc())
    decoded = decode_image(buffer.getvalue())
    cutout = Cutout(decoded, Image.new("L", decoded.size, 255))
    out = opened(render(cutout, OutputSpec(format=OutputFormat.JPEG, quality=100)))
    got = np.asarray(out).astype(float)[32, 32]
    expected = srgb_from_adobe(patch)
    delta_e = float(np.linalg.norm(lab(got) - lab(expected)))
    retagged = float(np.linalg.norm(lab(np.array(patch, float)) - lab(expected)))
    assert delta_e < 2.0, (got, expected)
    assert retagged > 5.0  # re-tagging alone would have shifted the colour this much
    assert "icc_profile" not in decoded.info


def test_exif_orientation_is_applied_before_the_geometry() -> None:
    cutout = product((1200, 900), box=(300, 150, 700, 750))
    stored = cutout.image.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, "PNG", exif=exif.tobytes())
    decoded = decode_image(buffer.getvalue())
    assert decoded.size == (1200, 900)


def test_an_encoded_cutout_is_decoded_or_refused_clearly() -> None:
    cutout = product((300, 200), box=(50, 50, 150, 150))
    rgba = cutout.image.convert("RGBA")
    rgba.putalpha(cutout.alpha)
    buffer = io.BytesIO()
    rgba.save(buffer, "PNG")
    back = decoded(EncodedCutout(buffer.getvalue(), "Adobe job j1"))
    assert np.array_equal(np.asarray(back.alpha), np.asarray(cutout.alpha))
    opaque = io.BytesIO()
    cutout.image.save(opaque, "PNG")
    with pytest.raises(
        PermanentItemError, match="Adobe job j1 returned a PNG without transparency"
    ):
        decoded(EncodedCutout(opaque.getvalue(), "Adobe job j1"))
    with pytest.raises(PermanentItemError, match="Adobe job j1 returned an unreadable PNG"):
        decoded(EncodedCutout(b"\x89PNG\r\n\x1a\nbroken", "Adobe job j1"))
