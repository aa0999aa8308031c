"""Small WebP renderings of a revision for the status page's thumbnails: the input
(before) and the cutout (after), made from the pixels the output writer decoded anyway
(daemon.delivery), so no image is decoded or fetched again for them. An input the engine
never saw (Photoshop fetches it from Dropbox itself) gets its "before" from the storage's
own small thumbnail of it instead (`input_preview`, Storage.input_thumbnail), asked once
when the outputs are written.

One box reduction by a whole factor and no resampling: at most SIZE pixels on the longest
side (256 for a 1024-pixel image), about 6 ms of CPU per image for both.
"""

from __future__ import annotations

import io
import math

from PIL import Image

from daemon.imaging import decode_image

SIZE = 320  # longest side, at most, in pixels
QUALITY = 80


def shrink(image: Image.Image, size: int = SIZE) -> Image.Image:
    factor = math.ceil(max(image.size) / size)
    return image.reduce(factor) if factor > 1 else image


def encode_preview(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "WEBP", quality=QUALITY, method=2)
    return out.getvalue()


def cutout_previews(
    image: Image.Image, alpha: Image.Image, *, with_before: bool
) -> tuple[bytes | None, bytes]:
    """(before, after): `image` as it is (RGB, or RGBA when the input had transparency),
    and `image` with the cutout's `alpha` (same size, so shrunk by the same factor)."""
    small = shrink(image)
    after = small.convert("RGB") if small.mode != "RGB" else small.copy()
    after.putalpha(shrink(alpha))
    return (encode_preview(small) if with_before else None), encode_preview(after)


def input_preview(data: bytes) -> bytes:
    """The "before" thumbnail from an encoded picture of the input (what the storage gives:
    Dropbox's own 256-pixel thumbnail, or a local file): decoded upright in sRGB, shrunk
    like the cutout's. PermanentItemError when `data` is no picture."""
    return encode_preview(shrink(decode_image(data)))
