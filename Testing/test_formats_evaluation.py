"""Slicer `.seg.nrrd` and DICOM SEG as labels of `evaluate interactive-3d` and `train-semantic --data`.

Real files: nilearn's ICBM152 MR as NIfTI with its grey / white matter as segments (written by
`segmentation_files.write_segments`, i.e. slicerio), a real CT series (pydicom-data) with a DICOM SEG
(highdicom), and a tiny real SAM checkpoint.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers_models import get_tiny_sam
from pydicom.data import get_testdata_file

from medicosam.cli import main
from medicosam.errors import InputError
from medicosam.models.checkpoint import export_sam
from medicosam.models.config import get_tiny_config
from medicosam.segmentation_files import Segment, write_segments
from medicosam.volume_io import read_volume
from medicosam_training.evaluation.data import LabeledFolder
from medicosam_training.records import parse_classes
from medicosam_training.semantic.data import get_semantic_records, read_case

CT_SERIES = Path(get_testdata_file("CT_small.dcm", download=False)).parent / "dicomdirtests/98892001/CT5N"
CLASSES = ["gray matter", "white matter"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny SAM at 128 px: fast enough for propagation and semantic training on the CPU."""
    return export_sam(get_tiny_sam(config=get_tiny_config(128)), tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="module")
def mr(icbm152, tmp_path_factory):
    """Two 5-slice slabs of the real MR at 4 mm in-plane as NIfTI, each beside a `.seg.nrrd` of its grey
    and white matter, and the same labels as label maps (gm = 1, wm = 2) in labels/."""
    root = tmp_path_factory.mktemp("mr")
    (root / "data").mkdir()
    (root / "labels").mkdir()
    masks = {}
    for case, start in (("mr--a", 40), ("mr--b", 50)):
        slab = (slice(start, start + 5), slice(None, None, 2), slice(None, None, 2))
        image = sitk.GetImageFromArray(icbm152["t1"][slab])
        image.SetSpacing((4.0, 4.0, 2.0))
        sitk.WriteImage(image, str(root / "data" / f"{case}.nii.gz"))
        gm, wm = icbm152["gm"][slab], icbm152["wm"][slab]
        volume = read_volume(root / "data" / f"{case}.nii.gz")
        write_segments([Segment("Gray matter", gm), Segment("White matter", wm, (1.0, 1.0, 0.8))], volume,
                       root / "data" / f"{case}.seg.nrrd")
        labels = sitk.GetImageFromArray((gm + 2 * (wm & ~gm)).astype(np.uint8))
        labels.CopyInformation(image)
        sitk.WriteImage(labels, str(root / "labels" / f"{case}.nii.gz"))
        masks[case] = gm, wm
    return root, masks


def _read_csv(path: Path) -> list:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_classes_option_is_ids_or_names():
    assert parse_classes(["1", "3"]) == ((1, 3), None)
    assert parse_classes(["Liver", "kidney"]) == (None, {"liver": 1, "kidney": 2})
    assert parse_classes(None) == (None, None)


def test_evaluate_3d_on_seg_nrrd_scores_the_segments_like_their_label_maps(mr, checkpoint, tmp_path, capsys):
    root, _ = mr

    def evaluate(out, *labels):
        return main(["evaluate", "interactive-3d", "--images", str(root / "data"), *labels, "--out",
                     str(tmp_path / out), "--model", f"tiny={checkpoint}", "--starts", "box", "--min-size", "50",
                     "--device", "cpu", "--quiet"])

    assert evaluate("nomap") == 2  # segment names without a class map would number classes per file
    assert "pass their class names" in capsys.readouterr().err
    assert evaluate("unknown", "--classes", "gray matter") == 2
    assert "'White matter' not in the class map" in capsys.readouterr().err

    assert evaluate("seg", "--classes", *CLASSES) == 0
    assert evaluate("maps", "--labels", str(root / "labels")) == 0
    seg = {(r["image"], r["class"]): float(r["dice"]) for r in _read_csv(tmp_path / "seg" / "interactive_3d.csv")}
    maps = {(r["image"], r["class"]): float(r["dice"]) for r in _read_csv(tmp_path / "maps" / "interactive_3d.csv")}
    assert set(seg) == {(case, c) for case in ("mr--a", "mr--b") for c in "12"}
    assert seg == pytest.approx(maps)  # the same objects, the same model: the same Dice


def test_labeled_folder_keeps_overlapping_segments_whole(mr, tmp_path):
    root, masks = mr
    gm, wm = masks["mr--a"]
    shutil.copy(root / "data" / "mr--a.nii.gz", tmp_path / "mr--a.nii.gz")
    brain = gm | wm
    write_segments([Segment("white matter", wm), Segment("brain", brain)], read_volume(tmp_path / "mr--a.nii.gz"),
                   tmp_path / "mr--a.seg.nrrd")  # two layers: white matter lies inside the brain
    (tmp_path / "classes.json").write_text(json.dumps({"brain": 1, "white matter": 2}))
    _, class_map = parse_classes([str(tmp_path / "classes.json")])
    (sample,) = LabeledFolder(tmp_path, None, ndim=3, class_map=class_map)
    assert sample.image_id == "mr--a" and sample.segment_classes.tolist() == [2, 1]
    assert np.array_equal(sample.segments[0], wm) and np.array_equal(sample.segments[1], brain)
    assert np.array_equal(sample.label, np.where(wm, 2, np.where(brain, 1, 0)))  # the larger id wins


def test_labeled_folder_reads_dicom_seg_beside_its_series(tmp_path):
    shutil.copytree(CT_SERIES, tmp_path / "ct--case0")
    volume = read_volume(tmp_path / "ct--case0")
    mask = np.zeros(volume.shape_kji, bool)
    mask[1:4, 4:12, 3:10] = True
    write_segments([Segment("liver", mask)], volume, tmp_path / "liver.dcm")
    with pytest.raises(InputError, match="pass their class names"):
        LabeledFolder(tmp_path, None, ndim=3)
    (sample,) = LabeledFolder(tmp_path, tmp_path, ndim=3, class_map={"liver": 1})
    assert sample.image.shape == volume.shape_kji and np.array_equal(sample.label, mask.astype(np.int32))


def test_train_semantic_on_volumes_beside_seg_nrrd(mr, checkpoint, tmp_path, capsys):
    root, masks = mr
    pool, test = get_semantic_records(root / "data")
    assert [Path(r.image).name for r in pool] == ["mr--a.nii.gz", "mr--b.nii.gz"] and test == []
    case = read_case(pool[0], class_map={"gray matter": 1, "white matter": 2})
    gm, wm = masks["mr--a"]
    assert np.array_equal(case.labels, np.where(wm, 2, np.where(gm, 1, 0)))

    common = ["train-semantic", "--data", str(root / "data"), "--model", str(checkpoint), "--decoder", "none",
              "--decoder-features", "4", "--iterations", "2", "--val-every", "2", "--val-fraction", "0.5",
              "--device", "cpu", "--quiet"]
    assert main([*common, "--classes", "gray matter", "--out", str(tmp_path / "bad")]) == 2
    assert "'White matter' not in the class map" in capsys.readouterr().err
    assert main([*common, "--classes", "3", "--out", str(tmp_path / "bad")]) == 2
    assert "pass their class names" in capsys.readouterr().err
    assert main([*common, "--classes", *CLASSES, "--out", str(tmp_path / "run")]) == 0
    assert "1 train / 1 val cases" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "history.json").read_text())[-1]["iteration"] == 2
    from medicosam_training.semantic.models import load_semantic_model

    assert load_semantic_model(tmp_path / "run" / "best.pt", "cpu").config.n_classes == 3


def test_evaluate_3d_scores_overlapping_segments_as_whole_objects(mr, checkpoint, tmp_path):
    root, masks = mr
    gm, wm = masks["mr--a"]
    brain = gm | wm
    (tmp_path / "seg").mkdir()
    shutil.copy(root / "data" / "mr--a.nii.gz", tmp_path / "seg" / "mr--a.nii.gz")
    write_segments([Segment("brain", brain), Segment("white matter", wm)],
                   read_volume(tmp_path / "seg" / "mr--a.nii.gz"), tmp_path / "seg" / "mr--a.seg.nrrd")
    reference = sitk.ReadImage(str(root / "data" / "mr--a.nii.gz"))
    for name, mask in (("brain", brain), ("wm", wm)):  # each structure alone as a label map
        (tmp_path / name).mkdir()
        labels = sitk.GetImageFromArray(mask.astype(np.uint8))
        labels.CopyInformation(reference)
        sitk.WriteImage(labels, str(tmp_path / name / "mr--a.nii.gz"))
    (tmp_path / "images").mkdir()
    shutil.copy(root / "data" / "mr--a.nii.gz", tmp_path / "images" / "mr--a.nii.gz")

    def evaluate(out, images, *labels):
        assert main(["evaluate", "interactive-3d", "--images", str(tmp_path / images), *labels, "--out",
                     str(tmp_path / out), "--model", f"tiny={checkpoint}", "--starts", "box", "--min-size", "50",
                     "--device", "cpu", "--quiet"]) == 0
        return {r["class"]: float(r["dice"]) for r in _read_csv(tmp_path / out / "interactive_3d.csv")}

    both = evaluate("both", "seg", "--classes", "brain", "white matter")
    assert set(both) == {"1", "2"}
    assert both["1"] == evaluate("brain_only", "images", "--labels", str(tmp_path / "brain"))["1"]  # the whole brain
    assert both["2"] == evaluate("wm_only", "images", "--labels", str(tmp_path / "wm"))["1"]


def test_a_segmentation_beside_its_volume_is_not_taken_for_an_image(tmp_path):
    from medicosam_training.records import get_folder_records

    for folder, names in (("images", ("case.nii.gz", "case.seg.nrrd")), ("labels", ("case.nii.gz",))):
        (tmp_path / folder).mkdir()
        for name in names:
            (tmp_path / folder / name).write_bytes(b"")
    records = get_folder_records(tmp_path / "images", tmp_path / "labels")
    assert [Path(record.image).name for record in records] == ["case.nii.gz"]
