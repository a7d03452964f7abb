"""SA-Med2D-20M's v1 folder -> torch-em's v2 HDF5 shards (`medicosam data convert-samed2d`).

Preprocessing once is how MedicoSAM v2 was trained: a step then reads one 512 px image and one
label image per sample instead of decoding a PNG and ~4 mask PNGs at full size and merging them.
What each image becomes (the facts of torch-em's v2 preprocessing, `sa_med2d.py::_preprocess_data`):

- its masks merged as the v1 reader merges them (sorted; ids 1..N; later masks overwrite earlier
  ones), then the ids renumbered 1..K in the same order;
- left out when no object is left or all its pixels are equal (counted as skipped);
- RGB (grey replicated), resized so the longest side is `size` (scikit-image `resize`: linear with
  anti-aliasing for images, nearest for labels), padded centred with 0;
- grouped per dataset (the second `--` field of the file name, e.g. AbdomenCT1K), in image path
  order, `shard_size` images per file `<dataset>_<shard:02d>.h5`.

Unlike torch-em, a mask whose shape differs from its image raises DataError (torch-em drops the
mask silently), datasets are matched by their exact name (torch-em matches its list of names as
substrings, so KiTS also collects KiTS2021's files) and shards that exist are kept, not rewritten.

Opt in to the reference's other choices with `ConvertConfig`: `reference_fixes` (its per-dataset
fixes) and `brain_fraction` (MedicoSAM v2's undersampling of 17 brain datasets, which
`create_sa_med2d_roi.py` applies to shards of 50,000 images: only their first 10% are used).
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from medicosam.atomic import writing_atomically
from medicosam.errors import InputError
from medicosam.normalization import get_rgb_uint8
from medicosam.options import option
from medicosam.preprocessing import get_resized_shape
from medicosam_training.records import Record, check_same_shape, get_label_array, read_image_2d

from .index import SAMed2DIndex, load_samed2d_index
from .shards import IMAGE_SIZE, LABELS, MODALITY, NAMES, RAW, SHARD_SIZE

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
Progress = Callable[[int, int], object]

#: The datasets MedicoSAM v2 undersampled (medico_sam/datasets/create_sa_med2d_roi.py).
BRAIN_DATASETS = (
    "BrainTumour", "BraTS2013", "BraTS2015", "BraTS2018", "BraTS2019", "BraTS2020", "BraTS2021", "Brain_PTM",
    "cranium", "Instance22", "ISLES_SPES", "ISLES_SISS", "ISLES2016", "ISLES2017", "ISLES2018", "ISLES2022",
    "LongitudinalMultipleSclerosisLesionSegmentation",
)


@dataclass(frozen=True)
class ConvertConfig:
    """How `convert_samed2d` writes the shards; the defaults write torch-em's format without its fixes."""

    size: int = option(IMAGE_SIZE, "side of the square images in the shards (torch-em's v2: 512)")
    shard_size: int = option(SHARD_SIZE, "images per shard file (torch-em: 50000)")
    reference_fixes: bool = option(
        False, "apply the reference pipeline's per-dataset fixes: drop ACDC's whole-ventricle mask (*0003_000*) "
               "when the image has others, invert ichallenge_adam_task2's masks, skip brain-growth images and "
               "Brain_PTM images with only 2 grey values")
    brain_fraction: Optional[float] = option(
        None, "write only this share (the first images) of each full shard of the 17 brain datasets, as "
              "MedicoSAM v2 used them (0.1)", metavar="SHARE")
    workers: int = option(8, "threads reading and resizing images")

    def __post_init__(self):
        if self.size < 1 or self.shard_size < 1 or self.workers < 1:
            raise InputError(f"size={self.size}, shard_size={self.shard_size}, workers={self.workers}: each must "
                             "be 1 or more")
        if self.brain_fraction is not None and not 0.0 < self.brain_fraction <= 1.0:
            raise InputError(f"brain_fraction={self.brain_fraction}: use a share in (0, 1]")


@dataclass
class ConvertSummary:
    shards_written: int = 0
    shards_kept: int = 0  # already there from an earlier run
    images_written: int = 0
    images_skipped: int = 0  # no object left, a constant image, or a reference fix


def get_dataset_name(image: str) -> str:
    """The source data set of an SA-Med2D image: `ct_00--AbdomenCT1K--Case_00011--x_0040.png` -> AbdomenCT1K."""
    fields = Path(image).name.split("--")
    return fields[1] if len(fields) > 2 else "unknown"


def merge_masks(record: Record, image: np.ndarray, dataset: Optional[str] = None) -> np.ndarray:
    """One instance image from an SA-Med2D record's binary masks: sorted, ids 1..N, later ones overwrite.

    `dataset` (only with the reference fixes) turns on that data set's fix.
    """
    instances = np.zeros(image.shape[:2], dtype=np.int32)
    masks = sorted(record.labels)
    for object_id, mask_path in enumerate(masks, start=1):
        if dataset == "ACDC" and "0003_000" in Path(mask_path).name and len(masks) > 1:
            continue  # the whole-ventricle ROI would turn the structures inside it into rings
        mask = get_label_array(read_image_2d(mask_path), mask_path)
        check_same_shape(image, mask, record.image, mask_path)
        instances[(mask == 0) if dataset == "ichallenge_adam_task2" else (mask > 0)] = object_id
    return instances


def resize_and_pad(array: np.ndarray, size: int, labels: bool) -> np.ndarray:
    """`array` (H, W[, C]) resized to the longest side `size` and zero-padded, centred, to size x size."""
    h, w = get_resized_shape(array.shape, size)
    if (h, w) != array.shape[:2]:
        from skimage.transform import resize

        kwargs = {"order": 0, "anti_aliasing": False} if labels else {}
        array = resize(array, (h, w) + array.shape[2:], preserve_range=True, **kwargs).astype(array.dtype)
    top, left = (size - h + 1) // 2, (size - w + 1) // 2
    padded = np.zeros((size, size) + array.shape[2:], dtype=array.dtype)
    padded[top:top + h, left:left + w] = array
    return padded


def convert_image(record: Record, size: int, fixes: bool) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(raw (3, size, size) uint8, labels (size, size) uint16) of one record, or None when it is left out."""
    dataset = get_dataset_name(record.image)
    if fixes and "brain-growth" in Path(record.image).name:
        return None
    image = read_image_2d(record.image)
    if fixes and dataset == "Brain_PTM" and np.unique(image).size == 2:
        return None  # a binary mask saved as the image
    instances = merge_masks(record, image, dataset if fixes else None)
    rgb = get_rgb_uint8(image)
    if not instances.any() or rgb.min() == rgb.max():
        return None
    ids = np.unique(instances)
    renumber = np.zeros(int(ids[-1]) + 1, dtype=np.uint16)
    renumber[ids[ids > 0]] = np.arange(1, np.count_nonzero(ids) + 1)
    return (resize_and_pad(rgb, size, labels=False).transpose(2, 0, 1),
            resize_and_pad(renumber[instances], size, labels=True))


def write_shard(path: Path, records: List[Record], images: List[str], config: ConvertConfig) -> int:
    """Write one shard (atomically: a killed run leaves no half shard); how many images it holds."""
    import h5py

    size, n = config.size, 0
    names, codes, modality_codes = [], [], {}
    convert = partial(convert_image, size=size, fixes=config.reference_fixes)
    with writing_atomically(path) as temporary, h5py.File(temporary, "w") as file, \
            ThreadPoolExecutor(config.workers) as pool:
        raw = file.create_dataset(RAW, (3, len(records), size, size), np.uint8, maxshape=(3, None, size, size),
                                  chunks=(3, 1, size, size), compression="lzf")
        labels = file.create_dataset(LABELS, (len(records), size, size), np.uint16, maxshape=(None, size, size),
                                     chunks=(1, size, size), compression="lzf")
        batch = 4 * config.workers  # converted images waiting to be written stay few
        for start in range(0, len(records), batch):
            chunk = records[start:start + batch]
            for record, image, result in zip(chunk, images[start:start + batch], pool.map(convert, chunk)):
                if result is None:
                    continue
                raw[:, n], labels[n] = result
                names.append(image)
                codes.append(modality_codes.setdefault(record.modality, len(modality_codes)))
                n += 1
        raw.resize(n, axis=1)
        labels.resize(n, axis=0)
        file.create_dataset(NAMES, data=np.array(names, dtype=object), dtype=h5py.string_dtype())
        file.create_dataset(MODALITY, data=np.array(codes, dtype=np.uint8))
        file.attrs["modalities"] = json.dumps(list(modality_codes))
    return n


def get_datasets(index: SAMed2DIndex) -> Dict[str, np.ndarray]:
    """The records of each source data set (positions in `index`, in image path order)."""
    names = [get_dataset_name(index.get_image(int(entry))) for entry in index.positions]
    datasets, codes = np.unique(np.array(names), return_inverse=True)
    return {str(name): np.flatnonzero(codes == code) for code, name in enumerate(datasets)}


def convert_samed2d(v1_folder: PathLike, out_folder: PathLike, config: ConvertConfig = ConvertConfig(),
                    progress: Optional[Progress] = None) -> ConvertSummary:
    """Write the shards of the SA-Med2D v1 folder `v1_folder` into `out_folder`; shards there are kept.

    The v1 JSON is read through the compact index (written next to it, else into `out_folder`).
    `progress(done, total)` is called after each shard with images done and in all.
    """
    out_folder = Path(out_folder)
    out_folder.mkdir(parents=True, exist_ok=True)
    index = load_samed2d_index(v1_folder, fallback_dir=out_folder)
    summary, done = ConvertSummary(), 0
    for dataset, positions in get_datasets(index).items():
        for shard, start in enumerate(range(0, len(positions), config.shard_size)):
            chunk = positions[start:start + config.shard_size]
            done += len(chunk)
            path = out_folder / f"{dataset}_{shard:02d}.h5"
            if path.exists():
                summary.shards_kept += 1
            else:
                full = len(chunk) == config.shard_size
                if config.brain_fraction is not None and dataset in BRAIN_DATASETS and full:
                    chunk = chunk[:int(config.brain_fraction * config.shard_size)]
                records = [index[int(i)] for i in chunk]
                images = [index.get_image(int(index.positions[i])) for i in chunk]
                n = write_shard(path, records, images, config)
                logger.info("%s: %d images (%d left out)", path, n, len(records) - n)
                summary.shards_written += 1
                summary.images_written += n
                summary.images_skipped += len(records) - n
            if progress is not None:
                progress(done, len(index))
    return summary
