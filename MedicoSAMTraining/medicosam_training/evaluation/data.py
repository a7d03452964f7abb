"""What the evaluations run on: labeled images or volumes, and the objects in their label maps.

Objects (docs/evaluation.md): for each class id of a label map, either each connected component
(full connectivity: 8 in 2D, 26 in 3D) is one object, as in the paper's 2D protocol, or the whole
class is one object, as micro-sam's 3D evaluation does per label id. Objects smaller than
`min_size` pixels / voxels are dropped (20, the paper's 2D value). Object ids are stable:
`"<class>"` for whole classes, `"<class>.<n>"` for the n-th kept component in raster order, so a
resumed evaluation finds the same objects under the same names.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]


@dataclasses.dataclass
class LabeledImage:
    """An image (2D: (H, W), or (H, W, 3) in colour) or volume (3D, KJI) with its label map of class ids
    (0 = background)."""

    image_id: str
    image: np.ndarray
    label: np.ndarray


@dataclasses.dataclass
class ObjectMask:
    """One object of a label map, stored as its bounding box and the mask inside it (cheap in 3D)."""

    class_id: int
    object_id: str
    bbox: Tuple[slice, ...]
    crop: np.ndarray  # bool mask inside bbox
    shape: Tuple[int, ...]  # of the whole label map

    @property
    def size(self) -> int:
        return int(np.count_nonzero(self.crop))

    def get_mask(self) -> np.ndarray:
        """The object's bool mask on the whole image / volume grid."""
        mask = np.zeros(self.shape, dtype=bool)
        mask[self.bbox] = self.crop
        return mask


def get_objects(label: np.ndarray, classes: Optional[Iterable[int]] = None, min_size: int = 20,
                split_components: bool = True) -> List[ObjectMask]:
    """The objects of a label map, by class then component (raster order of the components).

    Args:
        label: class ids, 2D or 3D.
        classes: classes to use; default: every non-zero id present.
        min_size: smallest object kept, in pixels / voxels.
        split_components: one object per connected component (True) or per class (False).
    """
    label = np.asarray(label)
    class_ids = np.unique(label) if classes is None else np.asarray(sorted(set(int(c) for c in classes)))
    structure = np.ones((3,) * label.ndim, dtype=bool)
    objects: List[ObjectMask] = []
    for class_id in (int(c) for c in class_ids if c != 0):
        class_mask = label == class_id
        if split_components:
            components, _ = ndimage.label(class_mask, structure=structure)
        else:
            components = class_mask.astype(np.int32)
        n_kept = 0
        for value, bbox in enumerate(ndimage.find_objects(components), start=1):
            if bbox is None:
                continue
            crop = components[bbox] == value
            if np.count_nonzero(crop) < min_size:
                continue
            n_kept += 1
            object_id = f"{class_id}.{n_kept}" if split_components else str(class_id)
            objects.append(ObjectMask(class_id, object_id, bbox, crop, label.shape))
    return objects


def warn_if_blank(sample: LabeledImage) -> None:
    """Warn when SAM would see nothing in an image that has objects (no finite value, or one value
    everywhere): its objects are still scored, and such scores say nothing about the model."""
    image = sample.image
    finite = image[np.isfinite(image)] if image.dtype.kind == "f" else image
    if finite.size == 0 or finite.min() == finite.max():
        what = "no finite values (all NaN/inf)" if finite.size == 0 else f"one value ({finite.flat[0]}) everywhere"
        logger.warning("%s: the image has %s, so SAM sees a blank image; its objects are scored anyway: "
                       "check the image file", sample.image_id, what)


def warn_if_no_objects(n_images: int, n_objects: int, classes: Optional[Sequence[int]], min_size: int) -> None:
    """Warn when no label map held an object to evaluate: the results would be empty without a word."""
    if n_objects == 0:
        which = f"of classes {list(classes)} " if classes else ""
        logger.warning("no object to evaluate in %d images: their label maps are all zero or hold no object %s"
                       "of at least --min-size %d, so the results are empty; check the label files, --classes "
                       "and --min-size", n_images, which, min_size)


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

    Pairing and label checks are those of the training data readers (`medicosam_training.data`);
    2D files are read with SimpleITK, 3D volumes with `medicosam.volume_io.read_volume`. Items are
    sorted by file name; `max_items` keeps the first n (the paper used the first 200 per dataset).
    """

    def __init__(self, images_dir: PathLike, labels_dir: PathLike, ndim: int, max_items: Optional[int] = None):
        from ..data import DataError, check_record_shapes, get_folder_records  # imports torch: not at start-up

        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        self.ndim = ndim
        self.records = get_folder_records(images_dir, labels_dir)[:max_items]
        if not self.records:
            raise DataError(f"{images_dir}: no image files found; put images there and label maps with the "
                            f"same names in {labels_dir}")
        check_record_shapes(self.records, ndim)  # all pairs now, not when an evaluation reaches them

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> LabeledImage:
        from ..data import DataError, check_same_shape, get_label_array, get_stem, read_image_2d

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

    from ..data import DataError

    array = np.asarray(read_volume(path).array)
    if array.ndim != 3:
        raise DataError(f"{path}: a volume of shape {array.shape}; the 3D evaluation needs grey-level "
                        "(K, J, I) volumes")
    return array
