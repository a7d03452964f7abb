"""SAM's image input (medicosam.preprocessing) equals segment_anything's own steps on a real slice."""

from __future__ import annotations

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from medicosam.models.config import build_sam, get_tiny_config
from medicosam.normalization import get_intensity_window
from medicosam.preprocessing import (
    PIXEL_MEAN,
    PIXEL_STD,
    get_normalised_pixels,
    get_padded_image,
    get_resized_coords,
    get_resized_image,
    get_resized_shape,
)


def test_resize_and_padding_equal_segment_anything(icbm152):
    t1 = icbm152["t1"]
    rgb = get_intensity_window(t1, "auto").apply(t1[:, 50, :])  # a coronal slice: 95 x 99 (rows x columns)
    transform = ResizeLongestSide(128)
    expected = transform.apply_image(rgb)
    np.testing.assert_array_equal(get_resized_image(rgb, 128), expected)
    assert get_resized_shape(rgb.shape, 128) == expected.shape[:2] == (123, 128)

    padded = get_padded_image(rgb, 128)
    assert padded.shape == (3, 128, 128) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[:, :123], expected.transpose(2, 0, 1))
    assert not padded[:, 123:].any()  # zero padding at the bottom

    coords = np.array([[10.0, 20.0], [98.0, 94.0]])
    np.testing.assert_array_equal(get_resized_coords(coords, rgb.shape[:2], 128),
                                  transform.apply_coords(coords, rgb.shape[:2]))


def test_pixel_statistics_are_sams():
    sam = build_sam(get_tiny_config())
    assert torch.equal(sam.pixel_mean.flatten(), torch.tensor(PIXEL_MEAN))
    assert torch.equal(sam.pixel_std.flatten(), torch.tensor(PIXEL_STD))
    images = torch.rand(2, 3, 256, 256) * 255
    torch.testing.assert_close(get_normalised_pixels(images), sam.preprocess(images), rtol=0, atol=0)
    volumes = torch.rand(1, 3, 2, 8, 8) * 255  # (B, 3, D, H, W): the channel axis stays axis 1
    torch.testing.assert_close(get_normalised_pixels(volumes)[:, :, 1], get_normalised_pixels(volumes[:, :, 1]))
