"""What the evaluations run on: labeled images or volumes, read from two folders on access.

The objects in their label maps are the protocol's business (`protocol.get_objects`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from medicosam.errors import DataError, InputError

from ..records import (
    check_record_shapes,
    check_same_shape,
    get_folder_records,
    get_label_array,
    get_stem,
    read_image_2d,
)

PathLike = Union[str, Path]


@dataclasses.dataclass
class LabeledImage:
    """An image (2D: (H, W), or (H, W, 3) in colour) or volume (3D, KJI) with its label map of class ids
    (0 = background)."""

    image_id: str
    image: np.ndarray
    label: np.ndarray


def get_model_image(image: np.ndarray) -> np.ndarray:
    """A 2D image as SAM sees it in training: (H, W) grey levels, or (H, W, 3) RGB for colour.

    Grey saved as RGB(A) (equal channels) keeps one channel, so it gets the grey intensity window;
    alpha is dropped.
    """
    if image.ndim == 2:
        return image
    channels = image[..., :3]
    if all(np.array_equal(channels[..., 0], channels[..., i]) for i in range(1, channels.shape[-1])):
        return channels[..., 0]
    return channels


class LabeledFolder(Sequence):
    """Images (or volumes) and label maps with the same file stems in two folders, read on access.

    Pairing and label checks are those of the training data readers (`medicosam_training.records`);
    2D files are read with SimpleITK, 3D volumes with `medicosam.volume_io.read_volume`. Items are
    sorted by file name; `max_items` keeps the first n (the paper used the first 200 per dataset).
    """

    def __init__(self, images_dir: PathLike, labels_dir: PathLike, ndim: int, max_items: Optional[int] = None):
        if ndim not in (2, 3):
            raise InputError(f"ndim must be 2 or 3 (images or volumes), got {ndim}")
        self.ndim = ndim
        self.records = get_folder_records(images_dir, labels_dir)[:max_items]
        if not self.records:
            raise DataError(f"{images_dir}: no image files found; put images there and label maps with the "
                            f"same names in {labels_dir}")
        check_record_shapes(self.records, ndim)  # all pairs now, not when an evaluation reaches them

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> LabeledImage:
        record = self.records[index]
        label_path = record.labels[0]
        if self.ndim == 2:
            image = get_model_image(read_image_2d(record.image))
            label = read_image_2d(label_path)
        else:
            image, label = _read_volume_array(record.image), _read_volume_array(label_path)
        label = get_label_array(label, label_path)
        check_same_shape(image, label, record.image, label_path)
        if image.ndim - (self.ndim == 2 and image.ndim == 3) != self.ndim:  # (H, W, 3) is 2D
            raise DataError(f"{record.image}: expected a {self.ndim}D image, got shape {image.shape}")
        return LabeledImage(get_stem(record.image), image, label)


def _read_volume_array(path: str) -> np.ndarray:
    from medicosam.volume_io import read_volume

    array = np.asarray(read_volume(path).array)
    if array.ndim != 3:
        raise DataError(f"{path}: a volume of shape {array.shape}; the 3D evaluation needs grey-level "
                        "(K, J, I) volumes")
    return array
