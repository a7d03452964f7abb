"""Training data for Algorithm 1: readers, object sampling, SAM-style resize + pad, splits, collate.

Every dataset yields the same sample, so the objective never cares where an image came from::

    {"image":    float32 tensor (3, S, S), values in [0, 255], grey replicated to 3 channels,
                 resized so the longest side is S (SAM's `ResizeLongestSide.apply_image`, bilinear)
                 and zero-padded at the bottom and right to S x S, as SAM pads;
     "masks":    bool tensor (n, S, S), 1 <= n <= n_obj objects, resized with nearest neighbour,
                 drawn without replacement among the objects that keep >= min_size pixels at size S;
     "modality": str (e.g. "ct", "mr", "us"; "unknown" when the file name does not say);
     "source":   str, the file (and slice) the sample came from, for error messages}

Object sampling is seeded per item: the generator is `np.random.default_rng((seed, epoch, index))`,
so a sample is reproducible, differs between epochs (call `set_epoch` once per epoch, as with
`DistributedSampler`; DataLoader workers started with `persistent_workers=True` keep the epoch they
were forked with) and does not depend on worker count or order.

Intensities: 8-bit images (grey or RGB) are used as they are, as SA-Med2D-20M ships them; any
other image goes through the core's `get_intensity_window(array, preset="auto")` so training sees
what the predictor sees (per image for 2D files, per volume for 3D).

Layouts (see `get_training_datasets` and docs/training.md) and bad data: every file problem raises
`DataError` naming the file. An image with no object of `min_size` pixels is skipped (counted in
`n_skipped`); a dataset with no usable image at all raises.
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from medicosam.errors import MedicoSAMError

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
T = TypeVar("T")

#: A "label" image with more distinct values than this is an intensity image saved by mistake.
MAX_LABELS = 1000
#: File types the readers accept (what SimpleITK reads without plugins).
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".nii", ".nii.gz", ".mha", ".mhd",
                  ".nrrd", ".nhdr")
SAMED2D_JSON = "SAMed2D_v1.json"
LABEL_MODES = ("instance", "semantic")
SPLITS = (None, "train", "val")


class DataError(MedicoSAMError, ValueError):
    """A training file cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class Record:
    """One image (or volume) before reading: its file, its label file(s) and its modality."""

    image: str
    labels: Tuple[str, ...]
    modality: str


# ---------------------------------------------------------------- names, splits, collate


def derive_modality(path: PathLike, default: str = "unknown") -> str:
    """Modality from an SA-Med2D-style name `<modality>_<sub>--<dataset>--...` ("ct_00--..." -> "ct").

    SA-Med2D's first field is modality_submodality (`ct_00`, `mr_t1`, `ultrasound_00`, `x_ray`, ...);
    the split stratifies on the part before the first "_", i.e. the imaging modality. Names without
    "--" carry no modality and get `default`.
    """
    name = Path(path).name
    if "--" not in name:
        return default
    return name.split("--", 1)[0].split("_", 1)[0].lower() or default


def get_stem(path: PathLike) -> str:
    """File name without its (possibly double, e.g. .nii.gz) suffix: how images and labels pair."""
    name = Path(path).name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def split_by_modality(items: Sequence[T], val_fraction: float, seed: int) -> Tuple[List[T], List[T]]:
    """Seeded train/val split stratified by `item.modality` (the paper's "stratified split").

    Each modality sends round(val_fraction * n) of its n items to val, at least one when it has two
    or more items and never all of them; a modality with a single item stays in train. Each modality
    is shuffled by its own generator (seed, crc32 of its name), so adding a modality leaves the others'
    splits unchanged. Both lists keep the input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    by_modality: Dict[str, List[int]] = {}
    for i, item in enumerate(items):
        by_modality.setdefault(item.modality, []).append(i)
    val_indices = set()
    for modality, indices in by_modality.items():
        n = len(indices)
        n_val = 0 if val_fraction == 0 or n < 2 else min(n - 1, max(1, round(val_fraction * n)))
        rng = np.random.default_rng((seed, zlib.crc32(modality.encode())))
        val_indices.update(indices[j] for j in rng.permutation(n)[:n_val])
    train = [item for i, item in enumerate(items) if i not in val_indices]
    val = [item for i, item in enumerate(items) if i in val_indices]
    return train, val


def select_split(records: Sequence[Record], split: Optional[str], val_fraction: float,
                 seed: int) -> List[Record]:
    """The records of one side of `split_by_modality` (all of them for split=None)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split is None:
        return list(records)
    train, val = split_by_modality(records, val_fraction, seed)
    return train if split == "train" else val


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


# ---------------------------------------------------------------- reading and checking arrays


def read_array(path: PathLike) -> np.ndarray:
    """The KJI array (K = 1 for 2D files; (..., 3) for 8-bit RGB) of any file `read_volume` reads."""
    from medicosam.volume_io import read_volume

    try:
        return np.asarray(read_volume(path).array)
    except MedicoSAMError as error:
        raise DataError(f"{path}: {error}") from error


def read_image_2d(path: PathLike) -> np.ndarray:
    """A 2D image as (H, W), or (H, W, 3) for 8-bit RGB."""
    array = read_array(path)
    if array.shape[0] != 1:
        raise DataError(_get_not_2d_message(path, array.shape[0]))
    return array[0]


def _get_not_2d_message(path: PathLike, n_slices: int) -> str:
    return (f"{path}: a volume of {n_slices} slices, expected a 2D image. Use VolumeSliceDataset (or the "
            "images/ + labels/ layout with volumes) for volumes.")


def get_rgb_uint8(array: np.ndarray, window=None) -> np.ndarray:
    """(H, W, 3) uint8 as SAM wants it: 8-bit as is, anything else through the intensity window.

    `window` is the per-volume window for slices of a volume; 2D images get their own ("auto").
    """
    if array.ndim == 3:
        return array
    if array.dtype == np.uint8:
        return np.repeat(array[..., None], 3, axis=-1)
    if window is None:
        from medicosam.normalization import get_intensity_window

        window = get_intensity_window(array, preset="auto")
    return np.asarray(window.apply(array), dtype=np.uint8)


def get_label_array(array: np.ndarray, path: PathLike) -> np.ndarray:
    """Check that `array` is a label image (ids 0..N) and return it as a signed integer array.

    Integer labels of any bit depth are accepted (16-bit instance ids are fine) and so are float
    files holding whole numbers (NIfTI label maps often do). Rejected, with the reason: RGB(A)
    masks (colour-coded labels must be mapped to ids first), non-integer values, negative ids, and
    more than `MAX_LABELS` distinct values, which is what a 16-bit or float *intensity* image
    saved as a mask looks like.
    """
    if array.ndim == 3 and array.shape[-1] == 3:
        raise DataError(f"{path}: the mask is an RGB image; masks must be "
                        "single-channel label images (0 = background, 1..N = objects or classes). "
                        "Map its colours to integer ids and save it as a grey-level image.")
    if array.dtype.kind == "b":
        return array.astype(np.int32)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise DataError(f"{path}: the mask has non-integer values, so it is an intensity image, "
                            "not a label image (0 = background, 1..N = objects or classes).")
        array = array.astype(np.int64)
    elif array.dtype.kind not in "iu":
        raise DataError(f"{path}: masks must hold integer labels, got pixel type {array.dtype}.")
    if array.size and array.min() < 0:
        raise DataError(f"{path}: the mask has negative values; label ids must be >= 0 (0 = background).")
    small = array.dtype.kind in "iu" and array.dtype.itemsize <= 2
    n_values = np.count_nonzero(np.bincount(array.ravel())) if small else len(np.unique(array))
    if n_values > MAX_LABELS:
        raise DataError(f"{path}: the mask has {n_values} distinct values (more than {MAX_LABELS}): it "
                        "looks like an intensity image (e.g. a 16-bit scan) saved as a mask. Masks must "
                        "be label images: 0 = background, 1..N = objects or classes.")
    return array.astype(np.int64 if array.dtype.itemsize >= 4 else np.int32)


def get_shape_mismatch(image_shape: Tuple[int, ...], label_shape: Tuple[int, ...], image_path: PathLike,
                       label_path: PathLike) -> Optional[str]:
    """What is wrong when a mask's pixel grid is not its image's (colour channels excluded), else None."""
    if tuple(image_shape) == tuple(label_shape):
        return None
    return (f"{label_path}: mask shape {tuple(label_shape)} does not match image {image_path} of shape "
            f"{tuple(image_shape)}; masks must be on the image's pixel grid.")


def check_same_shape(image: np.ndarray, labels: np.ndarray, image_path: PathLike,
                     label_path: PathLike) -> None:
    """Raise if a mask does not cover its image pixel for pixel."""
    mismatch = get_shape_mismatch(image.shape[:labels.ndim], labels.shape, image_path, label_path)
    if mismatch:
        raise DataError(mismatch)


def read_header_shape(path: PathLike) -> Tuple[int, ...]:
    """A file's pixel grid in array order ((H, W), or (K, J, I) for a volume of several slices), read
    from its header only (SimpleITK's ReadImageInformation): no pixel is decoded."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:  # ITK's last line says why; the lines above are its source location
        raise DataError(f"{path}: cannot read this file's header ({str(error).strip().splitlines()[-1]}).") \
            from error
    shape = tuple(reversed(reader.GetSize()))
    return shape[1:] if len(shape) == 3 and shape[0] == 1 else shape


def check_record_shapes(records: Sequence[Record], ndim: int) -> None:
    """Check every file's header and every mask against its image (and, for `ndim` 2, that no image is
    a volume) before training or an evaluation starts.

    Pixels are read only when an item is drawn, so a bad pair would otherwise stop a run whenever it
    comes up, maybe hours in. Headers are read in a thread pool (SimpleITK does not hold the GIL
    meanwhile; a PNG header costs ~1 ms). Raises DataError naming the first bad pair and the count.
    """
    from concurrent.futures import ThreadPoolExecutor

    paths = sorted({path for record in records for path in (record.image, *record.labels)})
    with ThreadPoolExecutor(max_workers=8) as pool:
        shapes = dict(zip(paths, pool.map(read_header_shape, paths)))
    volume = next((record.image for record in records if len(shapes[record.image]) > ndim), None)
    if volume is not None:
        raise DataError(_get_not_2d_message(volume, shapes[volume][0]))
    mismatches = [get_shape_mismatch(shapes[record.image], shapes[label], record.image, label)
                  for record in records for label in record.labels]
    mismatches = [message for message in mismatches if message]
    if mismatches:
        more = f" {len(mismatches) - 1} more masks do not match their images either." if len(mismatches) > 1 else ""
        raise DataError(mismatches[0] + more)


def get_instances_from_semantic(labels: np.ndarray) -> np.ndarray:
    """Instance ids from class ids: each 8-connected component of each class becomes one object."""
    from scipy import ndimage

    structure = np.ones((3,) * labels.ndim, dtype=bool)
    instances = np.zeros(labels.shape, dtype=np.int32)
    n_total = 0
    for class_id in np.unique(labels):
        if class_id == 0:
            continue
        components, n = ndimage.label(labels == class_id, structure=structure)
        instances[components > 0] = components[components > 0] + n_total
        n_total += n
    return instances


def get_preprocess_shape(shape: Sequence[int], image_size: int) -> Tuple[int, int]:
    """(h, w) after SAM's longest-side resize to `image_size`."""
    from segment_anything.utils.transforms import ResizeLongestSide

    return ResizeLongestSide.get_preprocess_shape(shape[0], shape[1], image_size)


def get_resized_labels(labels: np.ndarray, image_size: int) -> np.ndarray:
    """Labels resized like the image (longest side = image_size), nearest neighbour, not padded.

    Pixel centres are mapped exactly (torch's "nearest-exact"), so ids are never mixed.
    """
    out_h, out_w = get_preprocess_shape(labels.shape, image_size)
    rows = _get_nearest_indices(labels.shape[0], out_h)
    cols = _get_nearest_indices(labels.shape[1], out_w)
    return labels[rows[:, None], cols[None, :]]


def _get_nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def get_object_ids(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Ids (sorted) of the objects with at least `min_size` pixels."""
    ids, counts = np.unique(labels, return_counts=True)
    return ids[(ids != 0) & (counts >= min_size)]


# ---------------------------------------------------------------- datasets


class ObjectDataset(Dataset):
    """Base of the readers: (RGB uint8 image, instance labels) -> the sample dict of this module.

    Subclasses implement `__len__` and `_load(index) -> (rgb, labels, source, modality)`.
    """

    def __init__(self, name: str, image_size: int, n_obj: int, min_size: int, seed: int):
        if n_obj < 1 or image_size < 1 or min_size < 1:
            raise ValueError(f"image_size, n_obj and min_size must be >= 1, got {image_size}, {n_obj}, "
                             f"{min_size}")
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
        from segment_anything.utils.transforms import ResizeLongestSide

        size = self.image_size
        image = ResizeLongestSide(size).apply_image(rgb)
        h, w = resized.shape
        padded = np.zeros((3, size, size), dtype=np.float32)
        padded[:, :h, :w] = image.transpose(2, 0, 1)
        masks = np.zeros((ids.size, size, size), dtype=bool)
        masks[:, :h, :w] = resized[None] == ids[:, None, None]
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

    def __init__(self, name: str, records: Sequence[Record], image_size: int, n_obj: int, min_size: int,
                 seed: int):
        super().__init__(name, image_size, n_obj, min_size, seed)
        self.records = list(records)
        check_record_shapes(self.records, ndim=2)
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

    def __init__(self, root: PathLike, image_size: int = 1024, n_obj: int = 5, min_size: int = 25,
                 split: Optional[str] = None, val_fraction: float = 0.1, seed: int = 0):
        self.root = Path(root)
        records = select_split(get_samed2d_records(self.root), split, val_fraction, seed)
        super().__init__(f"SA-Med2D data at {self.root}", records, image_size, n_obj, min_size, seed)

    def _read_labels(self, record: Record, image: np.ndarray) -> np.ndarray:
        instances = np.zeros(image.shape[:2], dtype=np.int32)
        for object_id, mask_path in enumerate(sorted(record.labels), start=1):
            mask = get_label_array(read_image_2d(mask_path), mask_path)
            check_same_shape(image, mask, record.image, mask_path)
            instances[mask > 0] = object_id
        return instances


def find_samed2d_json(root: PathLike) -> Optional[Path]:
    """`root/SAMed2D_v1.json` or `root/annotations/SAMed2D_v1.json`, if one exists."""
    for candidate in (Path(root) / SAMED2D_JSON, Path(root) / "annotations" / SAMED2D_JSON):
        if candidate.is_file():
            return candidate
    return None


def get_samed2d_records(root: PathLike) -> List[Record]:
    """Records from SAMed2D_v1.json, sorted by image path (the JSON's order is not relied on)."""
    path = find_samed2d_json(root)
    if path is None:
        raise DataError(f"{root}: no {SAMED2D_JSON} here or in {Path(root) / 'annotations'}; point root at "
                        "the unpacked SAMed2Dv1 folder (the one holding images/ and masks/).")
    try:
        with open(path, encoding="utf-8") as file:
            mapping = json.load(file)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read the image -> masks JSON ({error}).") from error
    if not isinstance(mapping, dict):
        raise DataError(f"{path}: expected a JSON object mapping image paths to lists of mask paths.")
    root = Path(root)
    return [Record(str(root / image), tuple(str(root / mask) for mask in masks), derive_modality(image))
            for image, masks in sorted(mapping.items())]


class FolderDataset2D(_RecordDataset):
    """2D images in one folder and their label images (same stem, any supported suffix) in another.

    `label_mode="instance"`: each non-zero id is one object (it may be disconnected).
    `label_mode="semantic"`: ids are classes; each connected component of a class is one object.
    The modality comes from an SA-Med2D-style name prefix (`ct_...--rest.png`), else `modality`.
    """

    def __init__(self, images_dir: PathLike, labels_dir: PathLike, image_size: int = 1024, n_obj: int = 5,
                 min_size: int = 25, label_mode: str = "instance", split: Optional[str] = None,
                 val_fraction: float = 0.1, seed: int = 0, modality: str = "unknown"):
        if label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
        self.label_mode = label_mode
        records = get_folder_records(images_dir, labels_dir, modality)
        records = select_split(records, split, val_fraction, seed)
        super().__init__(f"image folder {images_dir}", records, image_size, n_obj, min_size, seed)

    def _read_labels(self, record: Record, image: np.ndarray) -> np.ndarray:
        label_path = record.labels[0]
        labels = get_label_array(read_image_2d(label_path), label_path)
        check_same_shape(image, labels, record.image, label_path)
        return get_instances_from_semantic(labels) if self.label_mode == "semantic" else labels


def list_images(directory: PathLike) -> List[Path]:
    """Image files (by suffix; hidden files such as macOS `._*` skipped) in `directory`, sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a folder.")
    return sorted(path for path in directory.iterdir()
                  if path.is_file() and not path.name.startswith(".")
                  and path.name.lower().endswith(IMAGE_SUFFIXES))


def get_folder_records(images_dir: PathLike, labels_dir: PathLike, modality: str = "unknown") -> List[Record]:
    """Pair each image with the label file of the same stem (nnU-Net's `_0000` channel tag allowed)."""
    labels = {get_stem(path): path for path in list_images(labels_dir)}
    records = []
    for image in list_images(images_dir):
        stem = get_stem(image)
        label = labels.get(stem) or (labels.get(stem[:-5]) if stem.endswith("_0000") else None)
        if label is None:
            raise DataError(f"{image}: no label file named {stem}.<suffix> in {labels_dir}; every image "
                            "needs a label image with the same name (any supported suffix).")
        records.append(Record(str(image), (str(label),), derive_modality(image, modality)))
    return records


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
    """

    def __init__(self, image_paths: Sequence[PathLike], label_paths: Sequence[PathLike], axis: int = 0,
                 image_size: int = 1024, n_obj: int = 5, min_size: int = 25, label_mode: str = "instance",
                 split: Optional[str] = None, val_fraction: float = 0.1, seed: int = 0,
                 modality: str = "unknown"):
        if len(image_paths) != len(label_paths):
            raise ValueError(f"{len(image_paths)} image volumes but {len(label_paths)} label volumes")
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2 (KJI array axes), got {axis}")
        if label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
        names = ", ".join(str(path) for path in image_paths[:3]) + (" ..." if len(image_paths) > 3 else "")
        super().__init__(f"volumes [{names}]", image_size, n_obj, min_size, seed)
        self.axis = axis
        self.label_mode = label_mode
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
                            f"pixels after resizing to {image_size} px; check the label volumes or lower "
                            "min_size.")

    def _add_volume(self, record: Record) -> None:
        from medicosam.normalization import get_intensity_window

        array = read_array(record.image)
        if array.ndim != 3:
            raise DataError(f"{record.image}: an RGB volume; VolumeSliceDataset reads grey-level volumes.")
        label_path = record.labels[0]
        labels = get_label_array(read_array(label_path), label_path)
        check_same_shape(array, labels, record.image, label_path)
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
        labels = np.take(volume.labels, k, axis=self.axis)
        return get_instances_from_semantic(labels) if self.label_mode == "semantic" else labels

    def __len__(self) -> int:
        return len(self.slices)

    def _load(self, index: int) -> Tuple[np.ndarray, np.ndarray, str, str]:
        volume_index, k = self.slices[index]
        volume = self.volumes[volume_index]
        rgb = get_rgb_uint8(np.take(volume.array, k, axis=self.axis), volume.window)
        source = f"{volume.path} (axis {self.axis}, slice {k})"
        return rgb, self._get_slice_labels(volume, k), source, volume.modality


# ---------------------------------------------------------------- layout detection


def is_volume_file(path: PathLike) -> bool:
    """True for a 3D file with more than one slice (read from the header only)."""
    return len(read_header_shape(path)) >= 3


def find_pair_folders(path: PathLike) -> Optional[Tuple[Path, Path]]:
    """(images, labels) folders of `path`: images/ + labels/, or nnU-Net/Decathlon imagesTr/ + labelsTr/."""
    for images, labels in (("images", "labels"), ("imagesTr", "labelsTr")):
        if (Path(path) / images).is_dir() and (Path(path) / labels).is_dir():
            return Path(path) / images, Path(path) / labels
    return None


def get_training_datasets(path: PathLike, image_size: int, n_obj: int = 5, min_size: int = 25,
                          val_fraction: float = 0.1, seed: int = 0, label_mode: str = "instance",
                          axis: int = 0) -> Tuple[ObjectDataset, Optional[ObjectDataset]]:
    """(train, val) datasets for the data at `path`, whose layout is detected:

    1. SA-Med2D-20M v1: `SAMed2D_v1.json` in `path` or `path/annotations` -> `SAMed2DDataset`.
    2. `path/images/` + `path/labels/` (or nnU-Net's `imagesTr/` + `labelsTr/`) holding 2D files ->
       `FolderDataset2D`; holding 3D volumes -> `VolumeSliceDataset` along `axis`.
    Images and labels pair by file stem (`case.nii.gz` <-> `case.png` works; `case_0000` also
    pairs with `case`). Name files `<modality>--rest` or `<modality>_<sub>--rest` to stratify
    the split by modality. `label_mode` applies to layout 2. val is None when val_fraction is 0.
    """
    path = Path(path)
    kwargs: Dict[str, Any] = dict(image_size=image_size, n_obj=n_obj, min_size=min_size,
                                  val_fraction=val_fraction, seed=seed)
    if find_samed2d_json(path) is not None:
        dataset_class, args = SAMed2DDataset, (path,)
    else:
        folders = find_pair_folders(path)
        if folders is None:
            raise DataError(f"{path}: no training data layout found. Expected {SAMED2D_JSON} (SA-Med2D-20M), "
                            "or images/ and labels/ folders (2D images or 3D volumes; imagesTr/ and "
                            "labelsTr/ also work). See docs/training.md.")
        records = get_folder_records(*folders)
        if not records:
            raise DataError(f"{folders[0]}: no image files ({', '.join(IMAGE_SUFFIXES)}).")
        kwargs["label_mode"] = label_mode
        if is_volume_file(records[0].image):
            dataset_class = VolumeSliceDataset
            args = ([record.image for record in records], [record.labels[0] for record in records], axis)
        else:
            dataset_class, args = FolderDataset2D, folders
    if val_fraction == 0:
        return dataset_class(*args, **kwargs), None
    return dataset_class(*args, split="train", **kwargs), dataset_class(*args, split="val", **kwargs)
