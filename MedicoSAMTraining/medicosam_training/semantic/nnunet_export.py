"""Write a semantic dataset's split in nnU-Net v2's raw format, so nnU-Net trains on the same split.

Layout (nnU-Net's `dataset_format.md`)::

    <root>/Dataset<ID>_<Name>/
        dataset.json        {"channel_names", "labels" (background 0, consecutive), "numTraining", "file_ending"}
        imagesTr/<case>_0000.nii.gz   (RGB: _0000, _0001, _0002 for R, G, B)
        labelsTr/<case>.nii.gz
        imagesTs/<case>_0000.nii.gz
        labelsTs/<case>.nii.gz        (not read by nnU-Net; for `medicosam evaluate semantic`)
        splits_final.json   [{"train": [...], "val": [...]}]: our train / validation split as fold 0

Images keep their original intensities and geometry (nnU-Net normalises itself; a channel named
"CT" gets its CT normalisation); 2D images become one-slice volumes. To train on exactly our split,
copy `splits_final.json` into `$nnUNet_preprocessed/Dataset<ID>_<Name>/` after
`nnUNetv2_plan_and_preprocess` and train fold 0. `check_nnunet_dataset` checks the written folder
against the documented schema (the checks of nnU-Net's `verify_dataset_integrity` that need no
nnU-Net install).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from medicosam.errors import DataError, InputError

from ..records import Record, get_label_array, get_stem, read_array
from .data import get_split_records

PathLike = Union[str, Path]
FILE_ENDING = ".nii.gz"
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_RGB_CHANNELS = ("R", "G", "B")


def get_dataset_folder_name(dataset_id: int, name: str) -> str:
    """`Dataset<ID>_<Name>` with the 3-digit id nnU-Net requires."""
    if not 1 <= dataset_id <= 999:
        raise InputError(f"dataset id {dataset_id}: nnU-Net ids have three digits (1..999)")
    if not _NAME.match(name):
        raise InputError(f"dataset name {name!r}: use letters, digits, '_' and '-' only")
    return f"Dataset{dataset_id:03d}_{name}"


def _write_case(record: Record, images_dir: Path, labels_dir: Optional[Path], case: str,
                n_classes: int) -> int:
    """Write one case's channel files (and labels); return its channel count."""
    import SimpleITK as sitk

    from medicosam.volume_io import read_volume, write_mask

    volume = read_volume(record.image)
    channels = [volume.array] if volume.array.ndim == 3 else [volume.array[..., c] for c in range(3)]
    for c, channel in enumerate(channels):
        image = sitk.GetImageFromArray(np.ascontiguousarray(channel))
        image.SetSpacing(volume.spacing)
        image.SetOrigin(volume.origin_lps)
        image.SetDirection(volume.direction_lps)
        sitk.WriteImage(image, str(images_dir / f"{case}_{c:04d}{FILE_ENDING}"), useCompression=True)
    if labels_dir is not None:
        label_path = record.labels[0]
        labels = get_label_array(read_array(label_path), label_path)
        if labels.shape != volume.shape_kji:
            raise DataError(f"{label_path}: shape {labels.shape} differs from {record.image} "
                            f"{volume.shape_kji}")
        if labels.max(initial=0) >= n_classes:
            raise DataError(f"{label_path}: label id {labels.max()} but {n_classes} classes "
                            f"(0..{n_classes - 1}): pass the number of classes including background")
        write_mask(labels, volume, labels_dir / f"{case}{FILE_ENDING}")
    return len(channels)


def export_nnunet_dataset(data: PathLike, root: PathLike, dataset_id: int, name: str, n_classes: int,
                          class_names: Optional[Sequence[str]] = None, val_fraction: float = 0.1, seed: int = 0,
                          channel_name: Optional[str] = None) -> Path:
    """Write `data`'s split (`semantic.data.get_split_records`) as nnU-Net raw dataset; return its folder.

    Args:
        data: dataset folder (images/ + labels/ or imagesTr/ + labelsTr/ [+ imagesTs/ + labelsTs/]).
        root: nnU-Net's raw folder (`$nnUNet_raw`).
        dataset_id, name: give `Dataset<ID>_<Name>`.
        n_classes: classes including background (ids 0..n_classes-1).
        class_names: names of classes 1..n_classes-1 (default class_1, ...).
        val_fraction, seed: the split, as for `medicosam train-semantic`.
        channel_name: nnU-Net channel name of grey images; default "CT" when every file is named as
            CT (`ct--...`), else "image" (z-score normalisation). RGB images get R, G, B.
    """
    names = list(class_names or [f"class_{c}" for c in range(1, n_classes)])
    if len(names) != n_classes - 1 or len(set(names)) != len(names) or "background" in names:
        raise InputError(f"give {n_classes - 1} distinct class names besides background, got {names}")
    split = get_split_records(data, val_fraction, seed)
    folder = Path(root) / get_dataset_folder_name(dataset_id, name)
    dirs = {part: folder / part for part in ("imagesTr", "labelsTr", "imagesTs", "labelsTs")}
    for directory in dirs.values():
        directory.mkdir(parents=True, exist_ok=True)
    cases: Dict[str, List[str]] = {"train": [], "val": [], "test": []}
    channel_counts = set()
    for part, records in split.items():
        images_dir, labels_dir = (dirs["imagesTs"], dirs["labelsTs"]) if part == "test" else (dirs["imagesTr"],
                                                                                             dirs["labelsTr"])
        for record in records:
            case = get_stem(record.image).removesuffix("_0000")
            if any(case in ids for ids in cases.values()):
                raise DataError(f"two images are named {case}: nnU-Net case names must be unique")
            channel_counts.add(_write_case(record, images_dir, labels_dir, case, n_classes))
            cases[part].append(case)
    if len(channel_counts) != 1:
        raise DataError("the dataset mixes grey and RGB images; nnU-Net needs one channel layout")
    if channel_counts == {3}:
        channel_names = dict(enumerate(_RGB_CHANNELS))
    else:
        ct = all(record.modality == "ct" for records in split.values() for record in records)
        channel_names = {0: channel_name or ("CT" if ct else "image")}
    dataset_json = {"name": name, "channel_names": {str(c): n for c, n in channel_names.items()},
                    "labels": {"background": 0, **{n: c for c, n in enumerate(names, start=1)}},
                    "numTraining": len(cases["train"]) + len(cases["val"]), "file_ending": FILE_ENDING,
                    "description": f"exported by medicosam export-nnunet (seed {seed}, val_fraction {val_fraction})"}
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    (folder / "splits_final.json").write_text(json.dumps([{"train": cases["train"], "val": cases["val"]}], indent=2))
    return folder


def check_nnunet_dataset(folder: PathLike) -> None:
    """Raise `DataError` listing every way `folder` breaks nnU-Net v2's raw format."""
    import SimpleITK as sitk

    folder = Path(folder)
    problems: List[str] = []
    try:
        meta = json.loads((folder / "dataset.json").read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{folder}: no readable dataset.json ({error})") from error
    missing = [key for key in ("labels", "channel_names", "numTraining", "file_ending") if key not in meta]
    if missing:
        raise DataError(f"{folder}/dataset.json lacks {missing}")
    ending, n_channels = meta["file_ending"], len(meta["channel_names"])
    if sorted(meta["channel_names"]) != [str(c) for c in range(n_channels)]:
        problems.append(f"channel_names keys must be '0'..'{n_channels - 1}'")
    ids = sorted(meta["labels"].values())
    if meta["labels"].get("background") != 0 or ids != list(range(len(ids))):
        problems.append(f"labels must map background to 0 and be consecutive, got {meta['labels']}")
    images = sorted((folder / "imagesTr").glob(f"*_0000{ending}"))
    if len(images) != meta["numTraining"]:
        problems.append(f"numTraining is {meta['numTraining']} but imagesTr holds {len(images)} cases")
    for image in images:
        case = image.name[:-len(f"_0000{ending}")]
        channels = [folder / "imagesTr" / f"{case}_{c:04d}{ending}" for c in range(n_channels)]
        label = folder / "labelsTr" / f"{case}{ending}"
        absent = [path.name for path in [*channels, label] if not path.is_file()]
        if absent:
            problems.append(f"{case}: missing {absent}")
            continue
        seg = sitk.ReadImage(str(label))
        values = set(np.unique(sitk.GetArrayViewFromImage(seg)).tolist())
        if not values <= set(ids):
            problems.append(f"{case}: label values {sorted(values - set(ids))} are not in dataset.json")
        for path in channels:
            channel = sitk.ReadImage(str(path))
            if channel.GetSize() != seg.GetSize() or not np.allclose(channel.GetSpacing(), seg.GetSpacing()):
                problems.append(f"{path.name}: size / spacing differ from its label")
    if problems:
        raise DataError(f"{folder} is not a valid nnU-Net raw dataset:\n  - " + "\n  - ".join(problems))
