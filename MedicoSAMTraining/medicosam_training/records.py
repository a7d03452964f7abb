"""Medical image data as records, free of torch: every tool that reads images and label maps uses it.

A `Record` names one image (or volume), its label file(s) and its modality before anything is read.
Here live the folder layouts (SA-Med2D-20M's JSON, images/ + labels/, nnU-Net's imagesTr/ + labelsTr/,
volumes next to Slicer `.seg.nrrd` files, DICOM series next to DICOM SEG files),
image / label pairing by file stem, the seeded modality-stratified split, the label checks (header
shapes before a run starts, label ids when a file is read) and the readers of 2D images and volumes.
Interactive training (`dataset.py`), semantic training and the evaluations build on it; it imports no
torch, so the commands can check their data before any model is loaded.

Every file problem raises `medicosam.errors.DataError` naming the file.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np

from medicosam.errors import DataError, InputError, MedicoSAMError

PathLike = Union[str, Path]
T = TypeVar("T")

#: A "label" image with more distinct values than this is an intensity image saved by mistake.
MAX_LABELS = 1000
#: File types the readers accept (what SimpleITK reads without plugins).
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".nii", ".nii.gz", ".mha", ".mhd",
                  ".nrrd", ".nhdr", ".seg.nrrd")  # .seg.nrrd: Slicer segmentations pair as `case.seg.nrrd`
SAMED2D_JSON = "SAMed2D_v1.json"
LABEL_MODES = ("instance", "semantic")
SPLITS = (None, "train", "val")


@dataclass(frozen=True)
class Record:
    """One image (or volume) before reading: its file, its label file(s) and its modality."""

    image: str
    labels: Tuple[str, ...]
    modality: str


# ---------------------------------------------------------------- names and splits


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


def get_val_mask(codes: np.ndarray, modalities: Sequence[str], val_fraction: float, seed: int) -> np.ndarray:
    """True for the items of the validation side, from one modality code per item (into `modalities`).

    The paper's "stratified split": each modality sends round(val_fraction * n) of its n items to val,
    at least one when it has two or more and never all of them; a modality with a single item stays
    in train. Each modality is shuffled by its own generator (seed, crc32 of its name), so adding a
    modality leaves the others' splits unchanged. On arrays, so SA-Med2D's index splits millions of
    records without a Python object per record.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"val_fraction={val_fraction}: use a share in [0, 1) (0 = no validation split)")
    val = np.zeros(len(codes), dtype=bool)
    for code in np.unique(codes):
        indices = np.flatnonzero(codes == code)
        n = int(indices.size)
        n_val = 0 if val_fraction == 0 or n < 2 else min(n - 1, max(1, round(val_fraction * n)))
        rng = np.random.default_rng((seed, zlib.crc32(modalities[code].encode())))
        val[indices[rng.permutation(n)[:n_val]]] = True
    return val


def split_by_modality(items: Sequence[T], val_fraction: float, seed: int) -> Tuple[List[T], List[T]]:
    """Seeded train/val split stratified by `item.modality` (`get_val_mask`); both keep the input order."""
    modalities = sorted({item.modality for item in items})
    codes = np.searchsorted(modalities, [item.modality for item in items])
    val = get_val_mask(codes, modalities, val_fraction, seed)
    return ([item for item, v in zip(items, val) if not v], [item for item, v in zip(items, val) if v])


def select_split(records: Sequence[Record], split: Optional[str], val_fraction: float,
                 seed: int) -> List[Record]:
    """The records of one side of `split_by_modality` (all of them for split=None)."""
    if split not in SPLITS:
        raise InputError(f"split={split!r}: use one of {SPLITS}")
    if split is None:
        return list(records)
    train, val = split_by_modality(records, val_fraction, seed)
    return train if split == "train" else val


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


def get_class_components(labels: np.ndarray,
                         class_ids: Optional[Iterable[int]] = None) -> Iterator[Tuple[int, np.ndarray, int]]:
    """(class id, its connected components as ids 1..n, n) for each non-zero class of a label map.

    Full connectivity (8 in 2D, 26 in 3D), as the paper's 2D protocol counts objects: the one rule by
    which training and the evaluations turn classes into objects. `class_ids` default: every id present.
    """
    from scipy import ndimage

    structure = np.ones((3,) * labels.ndim, dtype=bool)
    for class_id in (np.unique(labels) if class_ids is None else class_ids):
        if class_id != 0:
            components, n = ndimage.label(labels == class_id, structure=structure)
            yield int(class_id), components, n


def get_instances_from_classes(labels: np.ndarray) -> np.ndarray:
    """Instance ids from class ids: each connected component of each class becomes one object."""
    instances = np.zeros(labels.shape, dtype=np.int32)
    n_total = 0
    for _, components, n in get_class_components(labels):
        instances[components > 0] = components[components > 0] + n_total
        n_total += n
    return instances


# ---------------------------------------------------------------- layouts


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
        if image.name.lower().endswith(".seg.nrrd"):  # a segmentation saved beside its volume is a label
            continue
        stem = get_stem(image)
        label = labels.get(stem) or (labels.get(stem[:-5]) if stem.endswith("_0000") else None)
        if label is None:
            raise DataError(f"{image}: no label file named {stem}.<suffix> in {labels_dir}; every image "
                            "needs a label image with the same name (any supported suffix).")
        records.append(Record(str(image), (str(label),), derive_modality(image, modality)))
    return records


def is_volume_file(path: PathLike) -> bool:
    """True for a 3D file with more than one slice (read from the header only)."""
    return len(read_header_shape(path)) >= 3


def find_pair_folders(path: PathLike) -> Optional[Tuple[Path, Path]]:
    """(images, labels) folders of `path`: images/ + labels/, or nnU-Net/Decathlon imagesTr/ + labelsTr/."""
    for images, labels in (("images", "labels"), ("imagesTr", "labelsTr")):
        if (Path(path) / images).is_dir() and (Path(path) / labels).is_dir():
            return Path(path) / images, Path(path) / labels
    return None




# ---------------------------------------------------------------- segmentation files (.seg.nrrd, DICOM SEG)


def get_class_map(classes: Sequence[str]) -> Dict[str, int]:
    """Segment name -> class id from `--classes liver kidney` (ids 1, 2, ...) or `--classes map.json`.

    The JSON is a list of names (ids 1, 2, ...) or an object {"name": id}; several names may share an id,
    and id 0 leaves a segment out on purpose. Names match case-insensitively.
    """
    if len(classes) == 1 and classes[0].lower().endswith(".json"):
        try:
            with open(classes[0], encoding="utf-8") as file:
                loaded = json.load(file)
        except (OSError, ValueError) as error:
            raise InputError(f"--classes {classes[0]}: cannot read this class map ({error})") from error
        if isinstance(loaded, list):
            classes = loaded
        elif isinstance(loaded, dict) and all(isinstance(v, int) and v >= 0 for v in loaded.values()):
            return {str(name).strip().lower(): int(i) for name, i in loaded.items()}
        else:
            raise InputError(f"--classes {classes[0]}: expected a list of names or an object of name -> id >= 0")
    names = [str(name).strip().lower() for name in classes]
    if len(set(names)) != len(names):
        raise InputError(f"--classes {' '.join(classes)}: a name is given twice")
    return {name: i for i, name in enumerate(names, start=1)}


def get_segment_objects(segments: Sequence, class_map: Optional[Dict[str, int]],
                        path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """(masks (n, K, J, I) bool, class ids (n,)) of a segmentation file's segments, overlaps kept.

    With a class map, every segment name must be in it (unknown names are an error listing them: a
    misspelt "Livre" must not vanish from training); segments mapped to 0 are left out. Without one,
    each distinct name is a class, numbered in the file's order.
    """
    names = [segment.name.strip().lower() for segment in segments]
    if class_map is None:
        class_map = {name: i for i, name in enumerate(dict.fromkeys(names), start=1)}
    unknown = sorted({segment.name for segment, name in zip(segments, names) if name not in class_map})
    if unknown:
        raise DataError(f"{path}: segment(s) {', '.join(repr(n) for n in unknown)} not in the class map "
                        f"({', '.join(class_map)}); add them to --classes, or map them to 0 in a JSON class map "
                        "to leave them out.")
    kept = [(segment.mask, class_map[name]) for segment, name in zip(segments, names) if class_map[name]]
    if not kept:
        return np.zeros((0, *segments[0].mask.shape) if segments else (0, 0, 0, 0), bool), np.zeros(0, int)
    return np.stack([mask for mask, _ in kept]), np.array([class_id for _, class_id in kept])


def get_class_masks(masks: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
    """One mask per class present (union of its segments), in class id order: (n_classes, ...) bool."""
    return np.stack([masks[class_ids == i].any(axis=0) for i in np.unique(class_ids)]) if len(masks) else masks


def read_segment_objects(label_path: PathLike, image, class_map: Optional[Dict[str, int]] = None
                         ) -> Tuple[np.ndarray, np.ndarray]:
    """`get_segment_objects` of a `.seg.nrrd` / DICOM SEG file on the grid of `image` (a `Volume`)."""
    from medicosam.segmentation_files import read_segments

    return get_segment_objects(read_segments(label_path, image), class_map, label_path)


def _get_series_folders(folder: Path) -> Dict[str, Path]:
    """SeriesInstanceUID -> sub-folder of `folder` holding that DICOM series."""
    import SimpleITK as sitk

    return {uid: child for child in sorted(folder.iterdir()) if child.is_dir()
            for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(child))}


def get_segmentation_records(folder: PathLike, modality: str = "unknown") -> Optional[List[Record]]:
    """Records of a folder of volumes with Slicer segmentations or of DICOM series with DICOM SEG files,
    or None when it holds neither:

    - `case.nii.gz` (any volume format) next to `case.seg.nrrd` (Slicer's "Save" of the volume and its
      segmentation, names matched by stem);
    - DICOM series in sub-folders and DICOM SEG files (`*.dcm`) beside them: each SEG is paired with the
      sub-folder holding the series it references (its ReferencedSeriesSequence).
    """
    from medicosam.segmentation_files import SEG_NRRD_SUFFIX, get_dicom_seg_series

    folder = Path(folder)
    files = list_images(folder) if folder.is_dir() else []
    segmentations = [path for path in files if path.name.lower().endswith(SEG_NRRD_SUFFIX)]
    dicom_segs = {path: get_dicom_seg_series(path) for path in sorted(folder.glob("*.dcm"))} if folder.is_dir() else {}
    dicom_segs = {path: uid for path, uid in dicom_segs.items() if uid is not None}
    if not segmentations and not dicom_segs:
        return None
    images = {get_stem(path): path for path in files if path not in segmentations}
    records = []
    for segmentation in segmentations:
        image = images.get(get_stem(segmentation))
        if image is None:
            raise DataError(f"{segmentation}: no volume named {get_stem(segmentation)}.<suffix> beside it; save "
                            "each segmentation next to its volume with the same name (case.nrrd + case.seg.nrrd).")
        records.append(Record(str(image), (str(segmentation),), derive_modality(image, modality)))
    series = _get_series_folders(folder) if dicom_segs else {}
    for segmentation, uid in dicom_segs.items():
        if uid not in series:
            raise DataError(f"{segmentation}: the DICOM series it segments ({uid}) is in no sub-folder of "
                            f"{folder}; put each series in its own folder beside its SEG files.")
        records.append(Record(str(series[uid]), (str(segmentation),), derive_modality(series[uid], modality)))
    return records


# ---------------------------------------------------------------- class names of segmentation files


def parse_classes(values: Optional[Sequence[str]]) -> Tuple[Optional[Tuple[int, ...]], Optional[Dict[str, int]]]:
    """`--classes` as (class ids, None) for integers (`1 3`), or (None, class map) for segment names or a
    JSON class map (`liver kidney`, `classes.json`, see `records.get_class_map`); (None, None) when absent."""
    if not values:
        return None, None
    if all(value.isdigit() for value in values):
        return tuple(int(value) for value in values), None
    return None, get_class_map(values)


def get_segment_label_map(masks: np.ndarray, class_ids: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    """The class-id map of a segmentation file's segments; where classes overlap the larger id wins
    (name an inner structure after the one around it: `--classes liver tumour`)."""
    labels = np.zeros(shape, np.int32)
    for class_id in np.unique(class_ids):
        labels[masks[class_ids == class_id].any(axis=0)] = class_id
    return labels


def is_segmentation_record(record: Record) -> bool:
    """Whether the record's label is a Slicer segmentation or DICOM SEG file (named segments)."""
    from medicosam.segmentation_files import is_segmentation_file

    return is_segmentation_file(record.labels[0])


def check_class_map(records: Sequence[Record], class_map: Optional[Dict[str, int]]) -> None:
    """Refuse segmentation files without a class map: each file's own name order would give "liver" id 1
    in one file and id 2 in the next, and tables and models would mix classes without a word."""
    named = next((record.labels[0] for record in records if is_segmentation_record(record)), None)
    if named is not None and class_map is None:
        raise InputError(f"{named} names its segments: pass their class names, --classes liver kidney "
                         "(ids 1, 2, ...) or --classes classes.json, so every file's segments get the same ids")
