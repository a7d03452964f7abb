"""Training data for Algorithm 1 (torch): datasets of `records`, object sampling, SAM-style resize + pad, collate.

Every dataset yields the same sample, so the objective never cares where an image came from::

    {"image":    float32 tensor (3, S, S), values in [0, 255], grey replicated to 3 channels,
                 resized so the longest side is S and zero-padded at the bottom and right to S x S by
                 the model's own input transform (`InputTransform.get_padded_image`: SAM's bilinear
                 resize, or LiteMedSAM's area resize and min-max), so training sees what inference sees;
     "masks":    bool tensor (n, S, S), 1 <= n <= n_obj objects, resized with nearest neighbour,
                 drawn without replacement among the objects that keep >= min_size pixels at size S;
     "modality": str (e.g. "ct", "mr", "us"; "unknown" when the file name does not say);
     "source":   str, the file (and slice) the sample came from, for error messages}

Object sampling is seeded per item: the generator is `np.random.default_rng((seed, epoch, index))`,
so a sample is reproducible, differs between epochs (call `set_epoch` once per epoch, as with
`DistributedSampler`; DataLoader workers started with `persistent_workers=True` keep the epoch they
were forked with) and does not depend on worker count or order.

Intensities: the core's `get_rgb_uint8`: 8-bit images (grey or RGB) as they are, as SA-Med2D-20M
ships them; any other image through the core's "auto" intensity window, so training sees what the
predictor sees (per image for 2D files, per volume for 3D).

Records, layouts, pairing and label checks are `records.py`'s (see `get_training_datasets` and
docs/training.md); bad data: every file problem raises
`DataError` naming the file. An image with no object of `min_size` pixels is skipped (counted in
`n_skipped`); a dataset with no usable image at all raises.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from medicosam.errors import DataError, InputError
from medicosam.normalization import get_rgb_uint8
from medicosam.preprocessing import SAM_TRANSFORM, InputTransform, get_resized_shape

from .records import (
    IMAGE_SUFFIXES,
    LABEL_MODES,
    SAMED2D_JSON,
    PathLike,
    Record,
    check_record_shapes,
    check_same_shape,
    derive_modality,
    find_pair_folders,
    find_samed2d_json,
    get_class_components,
    get_class_map,
    get_class_masks,
    get_folder_records,
    get_instances_from_classes,
    get_label_array,
    get_segmentation_records,
    is_volume_file,
    read_array,
    read_image_2d,
    read_segment_objects,
    select_split,
)

logger = logging.getLogger(__name__)

#: A dataset's image size: SAM's resize to this many pixels, or the model's whole input transform.
ImageSize = Union[int, InputTransform]


def collate_objects(batch: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Stack samples whose object counts differ: masks zero-padded to the batch maximum + `valid`.

    Unlike micro-sam (which truncates every image to the batch's smallest object count), no object
    is thrown away; the objective ignores padded slots through `valid` (B, n_max).
    """
    n_max = max(sample["masks"].shape[0] for sample in batch)
    size = batch[0]["masks"].shape[-2:]
    masks = torch.zeros((len(batch), n_max, *size), dtype=torch.bool)
    valid = torch.zeros((len(batch), n_max), dtype=torch.bool)
    for b, sample in enumerate(batch):
        n = sample["masks"].shape[0]
        masks[b, :n] = sample["masks"]
        valid[b, :n] = True
    return {"image": torch.stack([sample["image"] for sample in batch]), "masks": masks, "valid": valid,
            "modality": [sample["modality"] for sample in batch],
            "source": [sample["source"] for sample in batch]}


# ---------------------------------------------------------------- SAM-style resize


def get_resized_labels(labels: np.ndarray, image_size: int) -> np.ndarray:
    """Labels (H, W) ids or (n, H, W) object masks resized like the image (longest side = image_size),
    nearest neighbour, not padded.

    Pixel centres are mapped exactly (torch's "nearest-exact"), so ids are never mixed.
    """
    out_h, out_w = get_resized_shape(labels.shape[-2:], image_size)
    rows = _get_nearest_indices(labels.shape[-2], out_h)
    cols = _get_nearest_indices(labels.shape[-1], out_w)
    return labels[..., rows[:, None], cols[None, :]]


def _get_nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def get_dataset_transform(image_size: ImageSize) -> InputTransform:
    """The input transform a dataset resizes with: the model's own, or SAM's at `image_size` pixels."""
    if isinstance(image_size, InputTransform):
        return image_size
    return dataclasses.replace(SAM_TRANSFORM, image_size=int(image_size))


def get_object_ids(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Ids (sorted) of the objects with at least `min_size` pixels; for (n, H, W) masks, 1 + mask index."""
    if labels.ndim == 3:  # a stack of object masks that may overlap (segments of a segmentation file)
        return np.flatnonzero(labels.reshape(labels.shape[0], -1).sum(axis=1) >= min_size) + 1
    ids, counts = np.unique(labels, return_counts=True)
    return ids[(ids != 0) & (counts >= min_size)]


# ---------------------------------------------------------------- datasets


class ObjectDataset(Dataset):
    """Base of the readers: (RGB uint8 image, instance labels) -> the sample dict of this module.

    Subclasses implement `__len__` and `_load(index) -> (rgb, labels, source, modality)`.
    `image_size`: the model's input side (SAM's resize), or the model's whole `InputTransform`
    (`medicosam.preprocessing.get_input_transform(sam)`), which every model not resized as SAM needs.
    """

    def __init__(self, name: str, image_size: ImageSize, n_obj: int, min_size: int, seed: int):
        self.transform = get_dataset_transform(image_size)
        image_size = self.transform.image_size
        if n_obj < 1 or image_size < 1 or min_size < 1:
            raise InputError(f"image_size={image_size}, n_obj={n_obj}, min_size={min_size}: each must be 1 or "
                             "more")
        self.name = name
        self.image_size = image_size
        self.n_obj = n_obj
        self.min_size = min_size
        self.seed = seed
        self.epoch = 0
        self.skipped: set = set()

    @property
    def n_skipped(self) -> int:
        """How many images were skipped (in this process) for having no object of min_size pixels."""
        return len(self.skipped)

    def set_epoch(self, epoch: int) -> None:
        """Draw other objects in the next epoch (the per-item generator is seeded with the epoch)."""
        self.epoch = epoch

    def _load(self, index: int) -> Tuple[np.ndarray, np.ndarray, str, str]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Dict[str, Any]:
        """Item `index`, or the next usable one when it has no object of `min_size` pixels."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        for offset in range(len(self)):
            position = (index + offset) % len(self)
            rgb, labels, source, modality = self._load(position)
            resized = get_resized_labels(labels, self.image_size)
            ids = get_object_ids(resized, self.min_size)
            if ids.size:
                rng = np.random.default_rng((self.seed, self.epoch, position))
                chosen = np.sort(rng.choice(ids, size=min(self.n_obj, ids.size), replace=False))
                return self._get_sample(rgb, resized, chosen, source, modality)
            if source not in self.skipped:
                logger.info("%s: skipped, no object of %d pixels at size %d", source, self.min_size,
                            self.image_size)
            self.skipped.add(source)
        raise DataError(f"{self.name}: none of its {len(self)} images has an object of at least "
                        f"{self.min_size} pixels after resizing to {self.image_size} px; check the masks "
                        "(are they empty?) or lower min_size.")

    def _get_sample(self, rgb: np.ndarray, resized: np.ndarray, ids: np.ndarray, source: str,
                    modality: str) -> Dict[str, Any]:
        size = self.image_size
        padded = self.transform.get_padded_image(rgb)
        h, w = resized.shape[-2:]
        masks = np.zeros((ids.size, size, size), dtype=bool)
        masks[:, :h, :w] = resized[ids - 1] if resized.ndim == 3 else resized[None] == ids[:, None, None]
        return {"image": torch.from_numpy(padded), "masks": torch.from_numpy(masks),
                "modality": modality, "source": source}

    def _check_usable(self) -> None:
        """Fail at construction, not mid-training, when no item is usable (or the first is unreadable)."""
        if len(self) == 0:
            raise DataError(f"{self.name}: no images (for a split: too few images per modality for the "
                            "validation fraction).")
        self[0]


class _RecordDataset(ObjectDataset):
    """2D datasets whose items are `Record`s (one image file, its label file(s))."""

    def __init__(self, name: str, records: Sequence[Record], image_size: ImageSize, n_obj: int, min_size: int,
                 seed: int):
        super().__init__(name, image_size, n_obj, min_size, seed)
        self.records = records  # a list, or SA-Med2D's memory-mapped index: kept as it is (no copy per worker)
        check_record_shapes(_get_checked_sample(records), ndim=2)
        self._check_usable()

    def __len__(self) -> int:
        return len(self.records)

    def _read_labels(self, record: Record, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _load(self, index: int) -> Tuple[np.ndarray, np.ndarray, str, str]:
        record = self.records[index]
        image = read_image_2d(record.image)
        labels = self._read_labels(record, image)
        return get_rgb_uint8(image), labels, record.image, record.modality


class SAMed2DDataset(_RecordDataset):
    """SA-Med2D-20M in its v1 file layout (the Hugging Face `SA-Med2D-16M.zip`, unpacked).

    Layout: `root/images/*.png`, `root/masks/*.png` and `root/SAMed2D_v1.json` (or
    `root/annotations/SAMed2D_v1.json`) mapping `"images/<name>.png"` to a list of
    `"masks/<name>--<class>_<instance>.png"` binary masks, paths relative to `root`. Names are
    `<modality>_<sub>--<dataset>--<case>--<axis>_<slice>`; the modality is the part before the first
    "_" (`ct`, `mr`, `pet`, `ultrasound`, `x` for x_ray, `endoscopy`, ...).

    Masks are merged into one instance image as micro-sam does: mask files in sorted order get ids
    1..N and later masks overwrite earlier ones. Caveat: a structure nested in an earlier one (a
    tumour inside its organ) turns the earlier mask into a ring; this is the reference behaviour,
    kept so that results are comparable. micro-sam's per-dataset fixes (ACDC ROI removal, inverted
    ichallenge masks, skipped brain-growth files) are not replicated; a mask whose shape differs
    from its image raises instead of being dropped silently.
    """

    def __init__(self, root: PathLike, image_size: ImageSize = 1024, n_obj: int = 5, min_size: int = 25,
                 split: Optional[str] = None, val_fraction: float = 0.1, seed: int = 0,
                 index_dir: Optional[PathLike] = None):
        from .samed2d.index import load_samed2d_index

        self.root = Path(root)
        records = load_samed2d_index(self.root, index_dir).select_split(split, val_fraction, seed)
        super().__init__(f"SA-Med2D data at {self.root}", records, image_size, n_obj, min_size, seed)

    def _read_labels(self, record: Record, image: np.ndarray) -> np.ndarray:
        from .samed2d.convert import merge_masks

        return merge_masks(record, image)


class SAMed2DShardDataset(ObjectDataset):
    """SA-Med2D-20M as torch-em's v2 HDF5 shards (`medicosam data convert-samed2d`, docs/data.md): one side of
    the same stratified split, sampled like every reader."""

    def __init__(self, folder: PathLike, image_size: ImageSize = 1024, n_obj: int = 5, min_size: int = 25,
                 split: Optional[str] = None, val_fraction: float = 0.1, seed: int = 0):
        from .samed2d.shards import ShardRecords

        super().__init__(f"SA-Med2D shards in {folder}", image_size, n_obj, min_size, seed)
        self.shards = ShardRecords(folder).select_split(split, val_fraction, seed)
        self._check_usable()

    def __len__(self) -> int:
        return len(self.shards)

    def _load(self, index: int) -> Tuple[np.ndarray, np.ndarray, str, str]:
        return self.shards.load(index)


class FolderDataset2D(_RecordDataset):
    """2D images in one folder and their label images (same stem, any supported suffix) in another.

    `label_mode="instance"`: each non-zero id is one object (it may be disconnected).
    `label_mode="semantic"`: ids are classes; each connected component of a class is one object.
    The modality comes from an SA-Med2D-style name prefix (`ct_...--rest.png`), else `modality`.
    """

    def __init__(self, images_dir: PathLike, labels_dir: PathLike, image_size: ImageSize = 1024, n_obj: int = 5,
                 min_size: int = 25, label_mode: str = "instance", split: Optional[str] = None,
                 val_fraction: float = 0.1, seed: int = 0, modality: str = "unknown"):
        if label_mode not in LABEL_MODES:
            raise InputError(f"label_mode={label_mode!r}: use one of {LABEL_MODES}")
        self.label_mode = label_mode
        records = get_folder_records(images_dir, labels_dir, modality)
        records = select_split(records, split, val_fraction, seed)
        super().__init__(f"image folder {images_dir}", records, image_size, n_obj, min_size, seed)

    def _read_labels(self, record: Record, image: np.ndarray) -> np.ndarray:
        label_path = record.labels[0]
        labels = get_label_array(read_image_2d(label_path), label_path)
        check_same_shape(image, labels, record.image, label_path)
        return get_instances_from_classes(labels) if self.label_mode == "semantic" else labels


@dataclass
class _LoadedVolume:
    path: str
    array: np.ndarray
    labels: np.ndarray
    window: Any
    modality: str


class VolumeSliceDataset(ObjectDataset):
    """Slices of 3D volumes and their label volumes, along one array axis (KJI; 0 = K = axial for
    an axial scan). Only slices with an object of `min_size` pixels (after resize) are items.

    Volumes are read with `medicosam.volume_io.read_volume` and held in memory (as read, plus the
    label volume); the intensity window is computed once per volume, so slices of one scan share it,
    as in the predictor. For data larger than memory, export slices to the 2D folder layout.
    `label_mode` works as in `FolderDataset2D` (components are taken per slice). Splits are per
    volume, so slices of one scan never end up on both sides.

    Label files may be Slicer `.seg.nrrd` or DICOM SEG files (`medicosam.segmentation_files`): each
    segment is one object ("instance"; overlapping segments stay separate objects), or each connected
    component of a class ("semantic"). `classes` (`records.get_class_map`) names the classes; a segment
    whose name is not among them is an error.
    """

    def __init__(self, image_paths: Sequence[PathLike], label_paths: Sequence[PathLike], axis: int = 0,
                 image_size: ImageSize = 1024, n_obj: int = 5, min_size: int = 25, label_mode: str = "instance",
                 split: Optional[str] = None, val_fraction: float = 0.1, seed: int = 0,
                 modality: str = "unknown", classes: Optional[Sequence[str]] = None):
        if len(image_paths) != len(label_paths):
            raise InputError(f"{len(image_paths)} image volumes but {len(label_paths)} label volumes: give one "
                             "label volume per image volume")
        if axis not in (0, 1, 2):
            raise InputError(f"axis={axis}: use 0, 1 or 2 (KJI array axes)")
        if label_mode not in LABEL_MODES:
            raise InputError(f"label_mode={label_mode!r}: use one of {LABEL_MODES}")
        names = ", ".join(str(path) for path in image_paths[:3]) + (" ..." if len(image_paths) > 3 else "")
        super().__init__(f"volumes [{names}]", image_size, n_obj, min_size, seed)
        self.axis = axis
        self.label_mode = label_mode
        self.class_map = get_class_map(classes) if classes else None
        records = [Record(str(image), (str(label),), derive_modality(image, modality))
                   for image, label in zip(image_paths, label_paths)]
        self.volumes: List[_LoadedVolume] = []
        self.slices: List[Tuple[int, int]] = []
        records = select_split(records, split, val_fraction, seed)
        if not records:
            raise DataError(f"{self.name}: no volumes (for a split: too few volumes per modality for "
                            f"val_fraction={val_fraction}).")
        for record in records:
            self._add_volume(record)
        if not self.slices:
            raise DataError(f"{self.name}: no slice along axis {axis} has an object of at least {min_size} "
                            f"pixels after resizing to {self.image_size} px; check the label volumes or lower "
                            "min_size.")

    def _add_volume(self, record: Record) -> None:
        from medicosam.normalization import get_intensity_window
        from medicosam.segmentation_files import is_segmentation_file
        from medicosam.volume_io import read_volume

        label_path = record.labels[0]
        if is_segmentation_file(label_path):
            image = read_volume(record.image)
            array = image.array
            masks, class_ids = read_segment_objects(label_path, image, self.class_map)
            labels = get_class_masks(masks, class_ids) if self.label_mode == "semantic" else masks
        else:
            array = read_array(record.image)
            labels = get_label_array(read_array(label_path), label_path)
            check_same_shape(array, labels, record.image, label_path)
        if array.ndim != 3:
            raise DataError(f"{record.image}: an RGB volume; VolumeSliceDataset reads grey-level volumes.")
        window = None if array.dtype == np.uint8 else get_intensity_window(array, preset="auto")
        volume = _LoadedVolume(record.image, array, labels, window, record.modality)
        usable = [k for k in range(array.shape[self.axis])
                  if get_object_ids(get_resized_labels(self._get_slice_labels(volume, k), self.image_size),
                                    self.min_size).size]
        if not usable:
            logger.warning("%s: skipped, no slice along axis %d has an object of %d pixels", record.image,
                           self.axis, self.min_size)
            self.skipped.add(record.image)
            return
        self.volumes.append(volume)
        self.slices.extend((len(self.volumes) - 1, k) for k in usable)

    def _get_slice_labels(self, volume: _LoadedVolume, k: int) -> np.ndarray:
        """(H, W) instance ids, or (n, H, W) object masks for the segments of a segmentation file."""
        if volume.labels.ndim == 4:
            masks = np.take(volume.labels, k, axis=self.axis + 1)
            if self.label_mode != "semantic":
                return masks
            objects = [components == i for mask in masks
                       for _, components, n in get_class_components(mask.astype(np.int32)) for i in range(1, n + 1)]
            return np.stack(objects) if objects else np.zeros((0, *masks.shape[1:]), bool)
        labels = np.take(volume.labels, k, axis=self.axis)
        return get_instances_from_classes(labels) if self.label_mode == "semantic" else labels

    def __len__(self) -> int:
        return len(self.slices)

    def _load(self, index: int) -> Tuple[np.ndarray, np.ndarray, str, str]:
        volume_index, k = self.slices[index]
        volume = self.volumes[volume_index]
        rgb = get_rgb_uint8(np.take(volume.array, k, axis=self.axis), volume.window)
        source = f"{volume.path} (axis {self.axis}, slice {k})"
        return rgb, self._get_slice_labels(volume, k), source, volume.modality


# ---------------------------------------------------------------- layouts


#: Data sets up to this many records have every file header checked at start; larger ones a seeded sample
#: (SA-Med2D-20M's 20 million files would take hours), the rest when they are drawn.
SHAPE_CHECK_LIMIT = 20_000


def _get_checked_sample(records: Sequence[Record]) -> Sequence[Record]:
    if len(records) <= SHAPE_CHECK_LIMIT:
        return records
    picks = np.random.default_rng(0).choice(len(records), SHAPE_CHECK_LIMIT, replace=False)
    logger.info("checking the file headers of %d of %d records; the others are checked when drawn",
                SHAPE_CHECK_LIMIT, len(records))
    return [records[int(i)] for i in np.sort(picks)]


def _holds_shards(path: Path) -> bool:
    from .samed2d.shards import SHARD_NAME

    return path.is_dir() and any(SHARD_NAME.match(child.name) for child in path.iterdir())


def get_training_datasets(path: PathLike, image_size: ImageSize, n_obj: int = 5, min_size: int = 25,
                          val_fraction: float = 0.1, seed: int = 0, label_mode: str = "instance",
                          axis: int = 0, index_dir: Optional[PathLike] = None,
                          classes: Optional[Sequence[str]] = None) -> Tuple[ObjectDataset, Optional[ObjectDataset]]:
    """(train, val) datasets for the data at `path`, whose layout is detected:

    1. SA-Med2D-20M v1: `SAMed2D_v1.json` in `path` or `path/annotations` -> `SAMed2DDataset` (its index
       is written next to the JSON, or in `index_dir` when the data folder is read-only);
       a folder of v2 shards `<dataset>_NN.h5` -> `SAMed2DShardDataset`.
    2. `path/images/` + `path/labels/` (or nnU-Net's `imagesTr/` + `labelsTr/`) holding 2D files ->
       `FolderDataset2D`; holding 3D volumes -> `VolumeSliceDataset` along `axis`.
    3. volumes next to Slicer segmentations (`case.nrrd` + `case.seg.nrrd`), or DICOM series folders
       next to DICOM SEG files -> `VolumeSliceDataset` (docs/formats.md); `classes` names the segments'
       classes (`records.get_class_map`), label files may also be `.seg.nrrd` in layout 2.
    Images and labels pair by file stem (`case.nii.gz` <-> `case.png` works; `case_0000` also
    pairs with `case`). Name files `<modality>--rest` or `<modality>_<sub>--rest` to stratify
    the split by modality. `label_mode` applies to layout 2. val is None when val_fraction is 0.
    `image_size`: the model's `InputTransform` (`medicosam.preprocessing.get_input_transform(sam)`, what
    `medicosam train` passes), or a side in pixels for SAM's resize.
    """
    path = Path(path)
    kwargs: Dict[str, Any] = dict(image_size=image_size, n_obj=n_obj, min_size=min_size,
                                  val_fraction=val_fraction, seed=seed)
    if find_samed2d_json(path) is not None:
        dataset_class, args = SAMed2DDataset, (path,)
        kwargs["index_dir"] = index_dir
    elif _holds_shards(path):
        dataset_class, args = SAMed2DShardDataset, (path,)
    elif (records := get_segmentation_records(path)) is not None:
        kwargs.update(label_mode=label_mode, classes=classes)
        dataset_class = VolumeSliceDataset
        args = ([record.image for record in records], [record.labels[0] for record in records], axis)
    else:
        folders = find_pair_folders(path)
        if folders is None:
            raise DataError(f"{path}: no training data layout found. Expected {SAMED2D_JSON} (SA-Med2D-20M), "
                            "or images/ and labels/ folders (2D images or 3D volumes; imagesTr/ and "
                            "labelsTr/ also work), or volumes next to Slicer .seg.nrrd / DICOM SEG files. See "
                            "docs/training.md and docs/formats.md.")
        records = get_folder_records(*folders)
        if not records:
            raise DataError(f"{folders[0]}: no image files ({', '.join(IMAGE_SUFFIXES)}).")
        kwargs["label_mode"] = label_mode
        if is_volume_file(records[0].image):
            kwargs["classes"] = classes
            dataset_class = VolumeSliceDataset
            args = ([record.image for record in records], [record.labels[0] for record in records], axis)
        else:
            dataset_class, args = FolderDataset2D, folders
    if val_fraction == 0:
        return dataset_class(*args, **kwargs), None
    return dataset_class(*args, split="train", **kwargs), dataset_class(*args, split="val", **kwargs)
