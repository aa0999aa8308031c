"""Small WebP renderings of an image for the status page's thumbnails (Pillow only, so
that the web side needs no numpy). The local engine makes them from the images it has
decoded anyway; daemon.web.thumbnails makes them from bytes when no engine did."""

from __future__ import annotations

import io

from PIL import Image

SIZE = 320  # longest side, in pixels
QUALITY = 80


def preview(image: Image.Image, size: int = SIZE) -> bytes:
    """At most `size` pixels on the longest side, alpha kept (RGBA and LA stay), as WebP."""
    factor = max(image.size) // size
    small = image.reduce(factor) if factor > 1 else image.copy()  # box first: 3x cheaper
    if small.mode not in ("RGB", "RGBA"):
        has_alpha = small.mode in ("LA", "PA") or "transparency" in small.info
        small = small.convert("RGBA" if has_alpha else "RGB")
    small.thumbnail((size, size))
    out = io.BytesIO()
    small.save(out, "WEBP", quality=QUALITY, method=2)
    return out.getvalue()
