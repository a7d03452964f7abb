"""Semantic segmentation data: class label maps (0 = background) for 2D slices and 3D patches.

Layout (`get_semantic_records`): `images/` + `labels/`, or nnU-Net's `imagesTr/` + `labelsTr/` with
optional `imagesTs/` + `labelsTs/` as the test split; 2D files or 3D volumes, paired by file stem
(`case_0000` pairs with `case`); or volumes beside their Slicer `.seg.nrrd` files and DICOM series
folders beside DICOM SEG files (docs/formats.md), whose segment names a class map (`records.get_class_map`)
turns into class ids. Train / validation come from the `Tr` pool through the same seeded,
modality-stratified `split_by_modality` the interactive training uses; the nnU-Net export and the
baselines take the very same split.

Every case is held in memory as 8-bit (after the per-volume intensity window of the core, so
training sees what inference sees) with the slicing axis first. Items are resized and padded like
SAM (`get_model_input`: longest side to S, bilinear with antialiasing; zero padding bottom / right;
labels nearest-neighbour, padding = background):
- `SemanticSliceDataset`: {"image": (3, S, S) float in [0, 255], "labels": (S, S) int64};
- `SemanticPatchDataset`: {"image": (3, D, S, S), "labels": (D, S, S)} for D = patch_depth
  consecutive slices (volumes shorter than D are padded with background slices).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from medicosam.errors import DataError
from medicosam.normalization import replicate_grey
from medicosam.preprocessing import get_resized_shape

from ..dataset import get_resized_labels
from ..records import (
    Record,
    check_class_map,
    check_same_shape,
    find_pair_folders,
    get_folder_records,
    get_label_array,
    get_segment_label_map,
    get_segmentation_records,
    get_stem,
    read_array,
    read_segment_objects,
    split_by_modality,
)

PathLike = Union[str, Path]


@dataclasses.dataclass
class SemanticCase:
    """One 2D image or 3D volume ready for slicing.

    Attributes:
        name: where it came from (file stem or a caller's name).
        image: (D, H, W) grey or (D, H, W, 3) RGB uint8, slicing axis first.
        labels: (D, H, W) class ids.
        modality: for the stratified split.
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    modality: str = "unknown"


def get_windowed_volume(array: np.ndarray, window=None) -> np.ndarray:
    """8-bit version of a (D, H, W[, 3]) volume through one intensity window (default: the core's "auto")."""
    from medicosam.normalization import get_intensity_window

    window = window or get_intensity_window(array, preset="auto")
    out = np.stack([window.apply(plane) for plane in array])
    return out if array.ndim == 4 else out[..., 0]


def get_case(image: np.ndarray, labels: np.ndarray, name: str, axis: int = 0, modality: str = "unknown",
             window=None) -> SemanticCase:
    """A `SemanticCase` from KJI arrays (any intensity type; RGB as (K, J, I, 3)), sliced along `axis`."""
    check_same_shape(image, labels, name, name)
    image = np.moveaxis(get_windowed_volume(np.asarray(image), window), axis, 0)
    return SemanticCase(name, image, np.moveaxis(np.asarray(labels), axis, 0), modality)


def read_case(record: Record, axis: int = 0, class_map: Optional[Dict[str, int]] = None) -> SemanticCase:
    """The case of one image file and its label file (`record.labels[0]`): a label map, or a segmentation
    file whose segment names `class_map` maps to class ids (the larger id wins where classes overlap)."""
    from medicosam.segmentation_files import is_segmentation_file
    from medicosam.volume_io import read_volume

    label_path = record.labels[0]
    if is_segmentation_file(label_path):
        check_class_map([record], class_map)
        volume = read_volume(record.image)
        image = np.asarray(volume.array)
        labels = get_segment_label_map(*read_segment_objects(label_path, volume, class_map), volume.shape_kji)
    else:
        image = read_array(record.image)
        labels = get_label_array(read_array(label_path), label_path)
        check_same_shape(image, labels, record.image, label_path)
    return get_case(image, labels, get_stem(record.image), axis if image.shape[0] > 1 else 0, record.modality)


def get_semantic_records(path: PathLike) -> Tuple[List[Record], List[Record]]:
    """(train + validation pool, test records) of a dataset folder (see the module docstring)."""
    path = Path(path)
    folders = find_pair_folders(path)
    if folders is None:
        segmentations = get_segmentation_records(path)
        if segmentations is not None:
            return segmentations, []
        raise DataError(f"{path}: expected images/ + labels/ or imagesTr/ + labelsTr/ (optionally imagesTs/ + "
                        "labelsTs/ for testing), or volumes beside .seg.nrrd / DICOM SEG files; see "
                        "docs/semantic.md")
    pool = get_folder_records(*folders)
    if not pool:
        raise DataError(f"{folders[0]}: no image files")
    test_images, test_labels = path / "imagesTs", path / "labelsTs"
    test = get_folder_records(test_images, test_labels) if test_images.is_dir() and test_labels.is_dir() else []
    return pool, test


def get_split_records(path: PathLike, val_fraction: float = 0.1,
                      seed: int = 0) -> Dict[str, List[Record]]:
    """{"train", "val", "test"} records of a dataset folder: the split every semantic tool uses."""
    pool, test = get_semantic_records(path)
    train, val = split_by_modality(pool, val_fraction, seed)
    return {"train": train, "val": val, "test": test}


def check_classes(cases: Sequence[SemanticCase], n_classes: int) -> None:
    """Raise when a label map holds an id >= n_classes (the model would have no output for it)."""
    for case in cases:
        top = int(case.labels.max(initial=0))
        if top >= n_classes:
            raise DataError(f"{case.name}: label id {top} but n_classes={n_classes} (ids must be 0..n_classes-1, "
                            "0 = background); pass a larger number of classes")


def get_model_input(image: np.ndarray, image_size: int) -> torch.Tensor:
    """(n, h, w[, 3]) uint8 slices -> (n, 3, S, S) float in [0, 255]: longest side to S, zero-padded like SAM."""
    rgb = image if image.ndim == 4 else replicate_grey(image)
    rgb = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float()
    height, width = get_resized_shape(rgb.shape[-2:], image_size)
    if (height, width) != tuple(rgb.shape[-2:]):
        rgb = F.interpolate(rgb, (height, width), mode="bilinear", align_corners=False, antialias=True)
    return F.pad(rgb.clamp(0, 255), (0, image_size - width, 0, image_size - height))


def get_model_labels(labels: np.ndarray, image_size: int) -> torch.Tensor:
    """(n, h, w) class ids -> (n, S, S) int64, nearest neighbour, padding = background."""
    resized = np.stack([get_resized_labels(plane, image_size) for plane in labels])
    out = np.zeros((len(labels), image_size, image_size), dtype=np.int64)
    out[:, :resized.shape[1], :resized.shape[2]] = resized
    return torch.from_numpy(out)


class SemanticSliceDataset(Dataset):
    """2D items: every slice (with a labelled pixel, unless `skip_empty=False`) of every case."""

    def __init__(self, cases: Sequence[SemanticCase], image_size: int, skip_empty: bool = True) -> None:
        self.cases = list(cases)
        self.image_size = image_size
        self.items = [(c, k) for c, case in enumerate(self.cases) for k in range(len(case.labels))
                      if not skip_empty or case.labels[k].any()]
        if not self.items:
            raise DataError(f"no {'labelled ' if skip_empty else ''}slices in {len(self.cases)} cases")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        c, k = self.items[index]
        case = self.cases[c]
        return {"image": get_model_input(case.image[k:k + 1], self.image_size)[0],
                "labels": get_model_labels(case.labels[k:k + 1], self.image_size)[0]}


class SemanticPatchDataset(Dataset):
    """3D items: `patch_depth` consecutive slices, starts every `stride` slices (default half a patch).

    Patches without any labelled voxel are skipped unless `skip_empty=False`.
    """

    def __init__(self, cases: Sequence[SemanticCase], image_size: int, patch_depth: int,
                 stride: Optional[int] = None, skip_empty: bool = True) -> None:
        self.cases = list(cases)
        self.image_size = image_size
        self.patch_depth = patch_depth
        stride = stride or max(1, patch_depth // 2)
        self.items = []
        for c, case in enumerate(self.cases):
            last = max(len(case.labels) - patch_depth, 0)
            for start in sorted(set(range(0, last + 1, stride)) | {last}):
                if not skip_empty or case.labels[start:start + patch_depth].any():
                    self.items.append((c, start))
        if not self.items:
            raise DataError(f"no {'labelled ' if skip_empty else ''}patches in {len(self.cases)} cases")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        c, start = self.items[index]
        case = self.cases[c]
        image = get_model_input(case.image[start:start + self.patch_depth], self.image_size)
        labels = get_model_labels(case.labels[start:start + self.patch_depth], self.image_size)
        missing = self.patch_depth - len(labels)
        if missing:
            image = F.pad(image, (0, 0, 0, 0, 0, 0, 0, missing))
            labels = F.pad(labels, (0, 0, 0, 0, 0, missing))
        return {"image": image.transpose(0, 1), "labels": labels}
