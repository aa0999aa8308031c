"""Outputs from one cutout: measured geometry (trim, padding, canvas, aspect, max_side),
background, and encoding. Pure Pillow; no I/O.

The subject's box comes from the alpha mask (pixels at or below `TRIM_ALPHA_THRESHOLD` are
stray, not subject). The subject is cut from the full-resolution cutout and resampled once,
straight to its final size, with Lanczos on premultiplied alpha (Pillow premultiplies RGBA
for every filter but nearest), so edges keep no dark or light fringe from the pixels the
mask removed. Margins are filled, never resampled: a JPEG's background is exactly the
requested colour away from the subject.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache

from PIL import Image, ImageCms

from daemon.errors import PermanentItemError
from daemon.imaging import PNG_COMPRESS_LEVEL, WEBP_METHOD, decode_image, subject_box
from daemon.models import Align, Cutout, EngineResult, Mode, OutputFormat, OutputSpec, Rgb

WHITE = Rgb(255, 255, 255)
# Lanczos is applied after a box reduction down to REDUCING_GAP times the target: the same
# result within a level on product shots, for a fraction of the CPU on 4x downscales.
REDUCING_GAP = 3.0

Box = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the subject goes: `source` (a box in the cutout) is resampled to `size` and
    placed at `offset` on a frame of `frame` pixels."""

    source: Box
    size: tuple[int, int]
    offset: tuple[int, int]
    frame: tuple[int, int]


def decoded(result: EngineResult) -> Cutout:
    """The pixels of an engine's result; an encoded one must be a PNG with transparency."""
    if isinstance(result, Cutout):
        return result
    try:
        image = decode_image(result.data)
    except PermanentItemError as exc:
        raise PermanentItemError(f"{result.source} returned an unreadable PNG: {exc}") from None
    if image.mode != "RGBA":
        raise PermanentItemError(f"{result.source} returned a PNG without transparency")
    return Cutout(image, image.getchannel("A"))


def render(cutout: Cutout, spec: OutputSpec) -> bytes:
    """The bytes of one output of `cutout`, as `spec` says."""
    if cutout.alpha.size != cutout.image.size:
        raise ValueError(
            f"alpha size {cutout.alpha.size} differs from image size {cutout.image.size}"
        )
    layout = plan_layout(cutout.image.size, _box_for(cutout, spec), spec)
    if spec.mode is Mode.MASK:
        picture = _place_mask(cutout.alpha, layout)
    else:
        picture = _place_subject(cutout, layout, _background(spec))
    return encode(picture, spec)


def _box_for(cutout: Cutout, spec: OutputSpec) -> Box | None:
    """The subject's box when the output crops to it (None: nothing visible, keep it all)."""
    return subject_box(cutout.alpha) if spec.crops else None


def _background(spec: OutputSpec) -> Rgb | None:
    if spec.background_color is not None:
        return spec.background_color
    return None if spec.format.has_alpha else WHITE


def plan_layout(size: tuple[int, int], box: Box | None, spec: OutputSpec) -> Layout:
    """The geometry of one output, from the image size and the subject's box."""
    width, height = size
    source = box or (0, 0, width, height)
    box_w, box_h = source[2] - source[0], source[3] - source[1]
    pad = spec.padding.pixels(max(box_w, box_h)) if spec.padding and box else 0
    if spec.canvas is not None:
        return _on_canvas(source, spec.canvas, pad, spec)
    frame_w, frame_h = box_w + 2 * pad, box_h + 2 * pad
    if spec.aspect is not None:
        frame_w, frame_h = _to_aspect(frame_w, frame_h, spec.aspect)
    scale = 1.0
    if spec.max_side is not None and max(frame_w, frame_h) > spec.max_side:
        scale = spec.max_side / max(frame_w, frame_h)
        frame_w, frame_h = _scaled(frame_w, frame_h, scale, spec.aspect)
    sub_w, sub_h = max(1, round(box_w * scale)), max(1, round(box_h * scale))
    x = (frame_w - sub_w) // 2
    y = (
        frame_h - sub_h - round(pad * scale)
        if spec.align is Align.BOTTOM
        else (frame_h - sub_h) // 2
    )
    return Layout(source, (sub_w, sub_h), (max(0, x), max(0, y)), (frame_w, frame_h))


def _on_canvas(source: Box, canvas: tuple[int, int], pad: int, spec: OutputSpec) -> Layout:
    """Scale the subject so its box spans `fill` of the canvas along the limiting side
    (and keeps at least `pad` pixels from every edge), then centre it or rest it on the
    bottom margin, which is the margin `fill` leaves on the limiting side."""
    width, height = canvas
    box_w, box_h = source[2] - source[0], source[3] - source[1]
    scale = spec.fill * min(width / box_w, height / box_h)
    if pad:
        scale = min(scale, (width - 2 * pad) / box_w, (height - 2 * pad) / box_h)
    sub_w = min(width, max(1, round(box_w * scale)))
    sub_h = min(height, max(1, round(box_h * scale)))
    x = (width - sub_w) // 2
    if spec.align is Align.BOTTOM:
        margin = max(pad, round(min(width, height) * (1 - spec.fill) / 2))
        y = max(0, height - sub_h - margin)
    else:
        y = (height - sub_h) // 2
    return Layout(source, (sub_w, sub_h), (x, y), canvas)


def _to_aspect(width: int, height: int, aspect: tuple[int, int]) -> tuple[int, int]:
    """Grow one side so that width:height is the aspect ratio."""
    ratio_w, ratio_h = aspect
    if width * ratio_h < height * ratio_w:
        return round(height * ratio_w / ratio_h), height
    return width, round(width * ratio_h / ratio_w)


def _scaled(
    width: int, height: int, scale: float, aspect: tuple[int, int] | None
) -> tuple[int, int]:
    """The frame scaled by `scale`; with an aspect, the longer side is scaled and the other
    follows the ratio exactly."""
    if aspect is None:
        return max(1, round(width * scale)), max(1, round(height * scale))
    ratio_w, ratio_h = aspect
    if width >= height:
        new_w = max(1, round(width * scale))
        return new_w, max(1, round(new_w * ratio_h / ratio_w))
    new_h = max(1, round(height * scale))
    return max(1, round(new_h * ratio_w / ratio_h)), new_h


def _resampled(image: Image.Image, layout: Layout) -> Image.Image:
    source_size = (layout.source[2] - layout.source[0], layout.source[3] - layout.source[1])
    if layout.size == source_size:
        return image.crop(layout.source)
    return image.resize(
        layout.size, Image.Resampling.LANCZOS, box=layout.source, reducing_gap=REDUCING_GAP
    )


def _place_mask(alpha: Image.Image, layout: Layout) -> Image.Image:
    subject = _resampled(alpha, layout)
    if layout.frame == subject.size:
        return subject
    frame = Image.new("L", layout.frame, 0)
    frame.paste(subject, layout.offset)
    return frame


def _place_subject(cutout: Cutout, layout: Layout, background: Rgb | None) -> Image.Image:
    """The subject resampled as premultiplied RGBA, then laid on the background (or on
    transparency: fully transparent pixels get RGB 0, which PNG and WebP store cheaply)."""
    rgba = _straight_rgba(cutout, layout.source)
    subject = _resampled(rgba, Layout((0, 0, *rgba.size), layout.size, (0, 0), layout.size))
    if background is None:
        if layout.frame == subject.size:
            return subject
        frame = Image.new("RGBA", layout.frame, (0, 0, 0, 0))
        frame.paste(subject, layout.offset)
        return frame
    color = (background.red, background.green, background.blue)
    frame = Image.new("RGB", layout.frame, color)
    frame.paste(subject.convert("RGB"), layout.offset, mask=subject.getchannel("A"))
    return frame


def _straight_rgba(cutout: Cutout, box: Box) -> Image.Image:
    """The cutout inside `box` as RGBA with its alpha, transparent pixels set to RGB 0."""
    image = cutout.image.crop(box)
    alpha = cutout.alpha.crop(box)
    rgb = image.convert("RGB") if image.mode != "RGB" else image
    result = Image.new("RGBA", rgb.size, (0, 0, 0, 0))
    result.paste(rgb, mask=alpha.point(_VISIBLE_LUT))
    result.putalpha(alpha)
    return result


_VISIBLE_LUT = [0] + [255] * 255


@cache
def srgb_profile_bytes() -> bytes:
    """The sRGB ICC profile that JPEG and WebP outputs carry (built by LittleCMS)."""
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    data: bytes = profile.tobytes()
    return data


def encode(picture: Image.Image, spec: OutputSpec) -> bytes:
    """PNG (zlib level 6), WebP (alpha kept) or JPEG (4:4:4); colour WebP and JPEG carry
    the sRGB profile (a mask, mode L, is plain greyscale)."""
    buffer = io.BytesIO()
    icc = srgb_profile_bytes() if picture.mode != "L" else None
    if spec.format is OutputFormat.JPEG:
        if picture.mode == "RGBA":  # a transparent JPEG is impossible: flatten on white
            flat = Image.new("RGB", picture.size, (255, 255, 255))
            flat.paste(picture, mask=picture.getchannel("A"))
            picture = flat
        picture.save(
            buffer,
            "JPEG",
            quality=spec.quality,
            subsampling=0,
            icc_profile=icc,
        )
    elif spec.format is OutputFormat.WEBP:
        picture.save(
            buffer,
            "WEBP",
            quality=spec.quality,
            method=WEBP_METHOD,
            icc_profile=icc,
        )
    else:
        picture.save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
