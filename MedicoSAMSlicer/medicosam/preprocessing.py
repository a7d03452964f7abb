"""A model's image input, once: the longest-side resize, intensity scaling, zero padding to S x S.

Every path that feeds a SAM-like model (the predictor, interactive training data, semantic models,
benchmarks) resizes and normalises through here, so training sees exactly the geometry inference
sees. An `InputTransform` says what a model's weights were trained with; the model owns it
(`get_input_transform`). SAM's is `segment_anything`'s `ResizeLongestSide` (PIL bilinear on uint8)
and ImageNet mean/std, which is what `SamPredictor` runs: masks stay equal to the official
predictor's. LiteMedSAM's is its inference's: OpenCV's pixel-area resize, boxes scaled by
`image_size` / longest side, and each resized image min-max scaled to [0, 1] (`TinyVitSam.preprocess`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Tuple

import numpy as np

#: SAM's ImageNet pixel mean and std (RGB, 0..255), the `Sam.pixel_mean` / `pixel_std` buffers.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclasses.dataclass(frozen=True)
class InputTransform:
    """What a model's image input is.

    Attributes:
        image_size: the side of its square input.
        resize: `sam` (segment_anything's ResizeLongestSide) or `area` (pixel-area weights, OpenCV's INTER_AREA).
        intensity: `imagenet` (pixel mean / std below) or `minmax` (each resized image to [0, 1]).
    """

    image_size: int = 1024
    resize: str = "sam"
    intensity: str = "imagenet"
    pixel_mean: Tuple[float, float, float] = PIXEL_MEAN
    pixel_std: Tuple[float, float, float] = PIXEL_STD

    def resize_image(self, rgb: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 -> uint8 with the longest side `image_size`."""
        if self.resize == "area":
            import cv2  # the [lite] extra: LiteMedSAM's inference resizes with OpenCV, so masks equal its own

            h, w = get_resized_shape(rgb.shape, self.image_size)
            return cv2.resize(np.ascontiguousarray(rgb), (w, h), interpolation=cv2.INTER_AREA)
        return get_resized_image(rgb, self.image_size)

    def resize_coords(self, coords: np.ndarray, original_size: Tuple[int, int]) -> np.ndarray:
        """(..., 2) (x, y) pixels of an image of `original_size` (h, w) -> pixels of the resized image
        (SAM: each axis by its rounded new side; LiteMedSAM: both by `image_size` / the longest side)."""
        if self.resize == "area":
            return np.asarray(coords, dtype=float) * (self.image_size / max(original_size))
        return get_resized_coords(coords, original_size, self.image_size)

    def get_padded_image(self, rgb: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 -> (3, S, S) float32 in [0, 255]: resized, then zero-padded bottom / right.

        The training input (batches need one size); the model's `preprocess` normalises it. A min-max
        model scales the padded image, so here its resized image is first stretched to [0, 255]: the
        zero padding then cannot lower the minimum, and the model sees what its inference feeds it
        (the min-max of the resized image, `TinyVitSam.preprocess`), up to float rounding.
        """
        image = self.resize_image(rgb).astype(np.float32)
        if self.intensity == "minmax":
            low, high = float(image.min()), float(image.max())
            image = (image - low) * np.float32(255.0 / max(high - low, 1e-8))
        h, w = image.shape[:2]
        padded = np.zeros((3, self.image_size, self.image_size), dtype=np.float32)
        padded[:, :h, :w] = image.transpose(2, 0, 1)
        return padded


SAM_TRANSFORM = InputTransform()
AREA_TRANSFORM = InputTransform(image_size=256, resize="area", intensity="minmax", pixel_mean=(0.0, 0.0, 0.0),
                                pixel_std=(1.0, 1.0, 1.0))


def get_input_transform(sam) -> InputTransform:
    """The transform a model owns (`TinyVitSam`), else SAM's at the model's input size."""
    own = getattr(sam, "input_transform", None)
    return own if own is not None else dataclasses.replace(SAM_TRANSFORM, image_size=sam.image_encoder.img_size)


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
    """SAM's training input at `image_size` (`InputTransform.get_padded_image`)."""
    return dataclasses.replace(SAM_TRANSFORM, image_size=image_size).get_padded_image(rgb)


def get_normalised_pixels(images):
    """(N, 3, ...) torch images in [0, 255] -> (images - PIXEL_MEAN) / PIXEL_STD, per channel."""
    return get_scaled_pixels(images, SAM_TRANSFORM)


def get_scaled_pixels(images, transform: InputTransform):
    """(N, 3, ...) torch images in [0, 255] -> the encoder's input under `transform`: each image min-max
    scaled to [0, 1] (`minmax`, LiteMedSAM's), else minus the pixel mean, over the pixel std, per channel."""
    if transform.intensity == "minmax":
        images = images.float()
        axes = tuple(range(1, images.ndim))
        low, high = images.amin(dim=axes, keepdim=True), images.amax(dim=axes, keepdim=True)
        return (images - low) / (high - low).clamp_min(1e-8)
    shape = (1, 3) + (1,) * (images.ndim - 2)
    mean, std = images.new_tensor(transform.pixel_mean), images.new_tensor(transform.pixel_std)
    return (images - mean.view(shape)) / std.view(shape)
