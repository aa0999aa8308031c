"""`files/get_thumbnail_v2` for the fake Dropbox: renders a stored file the way Dropbox
documents it (`dropbox.files.ThumbnailV2Arg`): jpeg, png or webp, a size from w32h32 to
w2048h1536, `strict` mode (fits inside the box, never enlarged), EXIF orientation applied,
transparency kept only with png/webp and `preserve_transparency`. Files over 20 MB and
extensions Dropbox does not thumbnail are refused with the route's own error tags."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

EXTENSIONS = frozenset({"jpg", "jpeg", "png", "tiff", "tif", "gif", "webp", "ppm", "bmp"})
SIZES = {
    "w32h32": (32, 32),
    "w64h64": (64, 64),
    "w128h128": (128, 128),
    "w256h256": (256, 256),
    "w480h320": (480, 320),
    "w640h480": (640, 480),
    "w960h640": (960, 640),
    "w1024h768": (1024, 768),
    "w2048h1536": (2048, 1536),
}
FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
MAX_BYTES = 20 * 1024 * 1024


class ThumbnailRefused(Exception):
    """A ThumbnailV2Error tag (`unsupported_extension`, `unsupported_image`, ...)."""

    def __init__(self, tag: str) -> None:
        super().__init__(tag)
        self.tag = tag


def _tag(value: Any, default: str) -> str:
    if value is None:
        return default
    return value[".tag"] if isinstance(value, dict) else str(value)


def render_thumbnail(name: str, data: bytes, arg: dict[str, Any]) -> bytes:
    """The thumbnail of a file called `name` holding `data`, as `arg` asks."""
    file_format = _tag(arg.get("format"), "jpeg")
    keep_alpha = bool(arg.get("preserve_transparency", False))
    if file_format not in FORMATS or (keep_alpha and file_format == "jpeg"):
        raise ThumbnailRefused("unsupported_output_format")
    box = SIZES[_tag(arg.get("size"), "w64h64")]
    if name.rpartition(".")[2].lower() not in EXTENSIONS:
        raise ThumbnailRefused("unsupported_extension")
    if len(data) > MAX_BYTES:
        raise ThumbnailRefused("unsupported_image")
    try:
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
        image.thumbnail(box)
    except (UnidentifiedImageError, OSError, ValueError):
        raise ThumbnailRefused("unsupported_image") from None
    alpha = keep_alpha and image.mode in ("RGBA", "LA", "PA", "P")
    image = image.convert("RGBA" if alpha else "RGB")
    out = io.BytesIO()
    image.save(out, FORMATS[file_format])
    return out.getvalue()
