"""Small WebP renderings of an image for the status page's thumbnails (Pillow only, so
that the web side needs no numpy). The local engine makes them from the images it has
decoded anyway (see imaging.previews); daemon.web.thumbnails from bytes when no engine did.

One box reduction by a whole factor and no resampling: at most SIZE pixels on the longest
side (256 for a 1024-pixel image), a few milliseconds per image.
"""

from __future__ import annotations

import io
import math

from PIL import Image

SIZE = 320  # longest side, at most, in pixels
QUALITY = 80


def shrink(image: Image.Image, size: int = SIZE) -> Image.Image:
    factor = math.ceil(max(image.size) / size)
    return image.reduce(factor) if factor > 1 else image


def encode_preview(image: Image.Image) -> bytes:
    """As WebP, alpha kept (RGBA and LA stay transparent)."""
    if image.mode not in ("RGB", "RGBA"):
        has_alpha = image.mode in ("LA", "PA") or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    out = io.BytesIO()
    image.save(out, "WEBP", quality=QUALITY, method=2)
    return out.getvalue()


def preview(image: Image.Image, size: int = SIZE) -> bytes:
    return encode_preview(shrink(image, size))
