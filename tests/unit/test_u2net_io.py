"""U²-Net's input and output maths against rembg's u2netp session, written out here as rembg
2.0.86 has it (`BaseSession.normalize`, `U2netpSession.predict`)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from daemon.engines.u2net_io import MEAN, STD, mask_image, mask_plane, model_input
from tests.helpers import rembg_mask, rembg_normalize


def noisy_photo(size: tuple[int, int], seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("size", [(1024, 683), (320, 320), (200, 900)])
def test_model_input_is_rembgs_bit_for_bit(size: tuple[int, int]) -> None:
    image = noisy_photo(size, seed=size[0])
    ours = model_input(image)
    assert ours.dtype == np.float32 and ours.shape == (1, 3, 320, 320)
    assert ours.flags.c_contiguous
    assert np.array_equal(ours, rembg_normalize(image))


def test_transparent_parts_are_shown_as_white() -> None:
    image = Image.new("RGBA", (64, 64), (10, 200, 30, 0))
    tensor = model_input(image)
    white = (1.0 - np.asarray(MEAN)) / np.asarray(STD)
    assert np.allclose(tensor[0, :, 5, 5], white, atol=1e-6)


def test_mask_is_rembgs_truncating_stretch_and_lanczos_resize() -> None:
    rng = np.random.default_rng(7)
    prediction = rng.uniform(0.02, 0.97, (1, 1, 320, 320)).astype(np.float32)
    ours = mask_image(prediction, (800, 533))
    assert ours.mode == "L" and ours.size == (800, 533)
    assert np.array_equal(np.asarray(ours), np.asarray(rembg_mask(prediction, (800, 533))))


def test_mask_plane_stretches_to_the_full_range_and_truncates() -> None:
    prediction = np.array([[[[0.2, 0.4], [0.6, 0.3]]]], np.float32)
    plane = mask_plane(prediction)
    assert plane.dtype == np.uint8
    assert plane.min() == 0 and plane.max() == 255
    assert plane[1, 1] == 63  # (0.3-0.2)/0.4*255 = 63.75, truncated as rembg does


def test_a_flat_prediction_gives_an_empty_mask_not_nan() -> None:
    plane = mask_plane(np.full((1, 1, 8, 8), 0.5, np.float32))
    assert not plane.any()
