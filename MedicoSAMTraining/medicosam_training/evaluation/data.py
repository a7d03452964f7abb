"""What the evaluations run on: labeled images or volumes, read from two folders on access.

Labels are label maps of class ids, or segmentation files (Slicer `.seg.nrrd`, DICOM SEG) read with the
training readers (`records.read_segment_objects`): each segment keeps its own mask (`LabeledImage.segments`),
so overlapping segments stay whole, and a class map (`--classes liver kidney` or a JSON) gives their
class ids. The objects in them are the protocol's business (`protocol.get_objects`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np

from medicosam.errors import DataError, InputError

from ..records import (
    Record,
    check_class_map,
    check_record_shapes,
    check_same_shape,
    get_folder_records,
    get_label_array,
    get_segment_label_map,
    get_segmentation_records,
    get_stem,
    is_segmentation_record,
    read_image_2d,
    read_segment_objects,
)

PathLike = Union[str, Path]


@dataclasses.dataclass
class LabeledImage:
    """An image (2D: (H, W), or (H, W, 3) in colour) or volume (3D, KJI) with its label map of class ids
    (0 = background).

    For a segmentation file, `segments` holds each segment's mask ((n, *label.shape) bool, overlaps kept)
    and `segment_classes` their class ids; `label` is then their class map, where the larger class id
    wins in overlaps.
    """

    image_id: str
    image: np.ndarray
    label: np.ndarray
    segments: Optional[np.ndarray] = None
    segment_classes: Optional[np.ndarray] = None


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


def get_labeled_records(images_dir: PathLike, labels_dir: Optional[PathLike]) -> Sequence[Record]:
    """Image / label records: label maps (or `.seg.nrrd`) with the same stems in `labels_dir`, or, with no
    `labels_dir` (or the images folder again), volumes beside their `.seg.nrrd` files or DICOM series
    folders beside DICOM SEG files (`records.get_segmentation_records`)."""
    if labels_dir is not None and Path(labels_dir).resolve() != Path(images_dir).resolve():
        return get_folder_records(images_dir, labels_dir)
    records = get_segmentation_records(images_dir)
    if records is None:
        raise DataError(f"{images_dir}: no .seg.nrrd beside its volumes and no DICOM SEG beside DICOM series "
                        "folders; give --labels, a folder of label maps with the images' file names")
    return sorted(records, key=lambda record: get_stem(record.image))


class LabeledFolder(Sequence):
    """Images (or volumes) and their labels (`get_labeled_records`), read on access.

    Pairing and label checks are those of the training data readers (`medicosam_training.records`);
    2D files are read with SimpleITK, 3D volumes with `medicosam.volume_io.read_volume`. Items are
    sorted by file name; `max_items` keeps the first n (the paper used the first 200 per dataset).
    `class_map` (`records.get_class_map`) gives the segments of segmentation files their class ids.
    """

    def __init__(self, images_dir: PathLike, labels_dir: Optional[PathLike], ndim: int,
                 max_items: Optional[int] = None, class_map: Optional[Dict[str, int]] = None):
        if ndim not in (2, 3):
            raise InputError(f"ndim must be 2 or 3 (images or volumes), got {ndim}")
        self.ndim = ndim
        self.class_map = class_map
        self.records = list(get_labeled_records(images_dir, labels_dir))[:max_items]
        if not self.records:
            raise DataError(f"{images_dir}: no image files found; put images there and label maps with the "
                            f"same names in {labels_dir}")
        check_class_map(self.records, class_map)
        # all pairs now, not when an evaluation reaches them; segmentation files are checked on their
        # image's grid when read (Slicer may crop them, a DICOM series is a folder)
        check_record_shapes([record for record in self.records if not is_segmentation_record(record)], ndim)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> LabeledImage:
        record = self.records[index]
        if is_segmentation_record(record):
            return self._read_segmentation(record)
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

    def _read_segmentation(self, record: Record) -> LabeledImage:
        from medicosam.volume_io import read_volume

        volume = read_volume(record.image)
        masks, class_ids = read_segment_objects(record.labels[0], volume, self.class_map)
        image = np.asarray(volume.array)
        if self.ndim == 2:
            if image.shape[0] != 1:
                raise DataError(f"{record.image}: a volume of {image.shape[0]} slices; use interactive-3d")
            image, masks = get_model_image(image[0]), masks[:, 0]
        else:
            _check_grey_volume(image, record.image)
        label = get_segment_label_map(masks, class_ids, masks.shape[1:] if len(masks) else image.shape[:self.ndim])
        return LabeledImage(get_stem(record.image), image, label, masks, class_ids)


def _check_grey_volume(array: np.ndarray, path: PathLike) -> None:
    if array.ndim != 3:
        raise DataError(f"{path}: a volume of shape {array.shape}; the 3D evaluation needs grey-level "
                        "(K, J, I) volumes")


def _read_volume_array(path: str) -> np.ndarray:
    from medicosam.volume_io import read_volume

    array = np.asarray(read_volume(path).array)
    _check_grey_volume(array, path)
    return array
