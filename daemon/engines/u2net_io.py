"""U²-Net's input and output maths, pixel for pixel the same as rembg's u2netp session.

Matching rembg exactly is a choice: U²-Net small is unstable on some photos, and an input
a few levels off can flip a region of the mask (a box-then-LANCZOS downscale gave IoU 0.63
against rembg on one photo). So the input is rembg's single LANCZOS resize to 320x320 and
its float64 normalising, and the output its truncating 0..255 stretch and LANCZOS resize
back. The one deliberate difference: transparent parts of an RGBA input are shown to the
model as white, where rembg shows it whatever colour the transparent pixels happen to hold.

numpy and Pillow come with the `local` extra; they are imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

MODEL_SIDE = 320  # U²-Net's input is 1x3x320x320; output 0 is the fused, sigmoid map
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def model_input(image: Image.Image) -> np.ndarray:
    """1x3x320x320 float32, normalised as U²-Net was trained (rembg's `normalize`)."""
    import numpy as np
    from PIL import Image

    small = image.resize((MODEL_SIDE, MODEL_SIDE), Image.Resampling.LANCZOS)
    if small.mode == "RGBA":  # show the model the transparent parts as a plain white backdrop
        flat = Image.new("RGB", small.size, (255, 255, 255))
        flat.paste(small, mask=small.getchannel("A"))
        small = flat
    pixels = np.asarray(small.convert("RGB"), dtype=np.float64)
    pixels /= max(float(pixels.max()), 1e-6)
    pixels -= np.asarray(MEAN)
    pixels /= np.asarray(STD)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[np.newaxis], dtype=np.float32)


def mask_plane(prediction: np.ndarray) -> np.ndarray:
    """The model's 1x1xHxW map stretched to 0..255 and truncated to uint8, as rembg does."""
    import numpy as np

    plane = prediction[0, 0]
    low, high = plane.min(), plane.max()
    scaled = (plane - low) / max(high - low, np.float32(1e-6)) * np.float32(255)
    result: np.ndarray = scaled.astype(np.uint8)
    return result


def mask_image(prediction: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """The 0..255 mask resized (LANCZOS) to the input's full size."""
    from PIL import Image

    return Image.fromarray(mask_plane(prediction)).resize(size, Image.Resampling.LANCZOS)
