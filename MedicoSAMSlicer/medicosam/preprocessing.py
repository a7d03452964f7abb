"""SAM's image input, once: pixel statistics, the longest-side resize, zero padding to S x S.

Every path that feeds SAM (the predictor, interactive training data, semantic models, benchmarks)
resizes and normalises through here, so training sees exactly the geometry inference sees. The
resize is `segment_anything`'s `ResizeLongestSide` (PIL bilinear on uint8), which is what
`SamPredictor` runs: masks stay equal to the official predictor's.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

#: SAM's ImageNet pixel mean and std (RGB, 0..255), the `Sam.pixel_mean` / `pixel_std` buffers.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def get_resized_shape(shape: Sequence[int], image_size: int) -> Tuple[int, int]:
    """(h, w) of an image of `shape` (h, w, ...) after the resize of its longest side to `image_size`."""
    from segment_anything.utils.transforms import ResizeLongestSide

    return ResizeLongestSide.get_preprocess_shape(int(shape[0]), int(shape[1]), image_size)


def get_resized_image(rgb: np.ndarray, image_size: int) -> np.ndarray:
    """(h, w, 3) uint8 -> uint8 with the longest side `image_size`, as `SamPredictor.set_image` does."""
    from segment_anything.utils.transforms import ResizeLongestSide

    return ResizeLongestSide(image_size).apply_image(rgb)


def get_resized_coords(coords: np.ndarray, original_size: Tuple[int, int], image_size: int) -> np.ndarray:
    """(..., 2) (x, y) pixels of an image of `original_size` (h, w) -> pixels of the resized image."""
    from segment_anything.utils.transforms import ResizeLongestSide

    return ResizeLongestSide(image_size).apply_coords(np.asarray(coords), tuple(original_size))


def get_padded_image(rgb: np.ndarray, image_size: int) -> np.ndarray:
    """(h, w, 3) uint8 -> (3, S, S) float32 in [0, 255]: resized, then zero-padded bottom / right.

    The training input: SAM normalises it with `Sam.preprocess` (which then has nothing to pad).
    """
    image = get_resized_image(rgb, image_size)
    h, w = image.shape[:2]
    padded = np.zeros((3, image_size, image_size), dtype=np.float32)
    padded[:, :h, :w] = image.transpose(2, 0, 1)
    return padded


def get_normalised_pixels(images):
    """(N, 3, ...) torch images in [0, 255] -> (images - PIXEL_MEAN) / PIXEL_STD, per channel."""
    shape = (1, 3) + (1,) * (images.ndim - 2)
    return (images - images.new_tensor(PIXEL_MEAN).view(shape)) / images.new_tensor(PIXEL_STD).view(shape)
