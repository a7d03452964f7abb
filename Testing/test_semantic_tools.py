"""Semantic tools end to end on real data: the CLI (train, predict, evaluate) and the nnU-Net export."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from helpers_models import get_tiny_sam

from medicosam.cli import main
from medicosam.errors import DataError, InputError
from medicosam.models.checkpoint import export_sam, export_sam_with_decoder
from medicosam.models.config import get_tiny_config
from medicosam_training.semantic import check_nnunet_dataset, export_nnunet_dataset, get_split_records
from medicosam_training.unetr import get_unetr_decoder

CLASSES = ["gm", "wm", "other"]


def _write(array: np.ndarray, path, rgb: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array, isVector=rgb)
    if image.GetDimension() == 3:
        image.SetSpacing((2.0, 2.0, 2.0))
    sitk.WriteImage(image, str(path))


@pytest.fixture(scope="module")
def brain_dataset(icbm152, tmp_path_factory):
    """ICBM152 slabs as an nnU-Net-style folder: 3 training volumes, 1 test volume (labels GM 1, WM 2, other 3)."""
    t1 = icbm152["t1"]
    labels = np.where(icbm152["gm"], 1, np.where(icbm152["wm"], 2, np.where(t1 > 0, 3, 0))).astype(np.uint8)
    root = tmp_path_factory.mktemp("brain")
    for part, name, (a, b) in [("Tr", "mr--slab_a", (20, 26)), ("Tr", "mr--slab_b", (30, 36)),
                               ("Tr", "mr--slab_c", (50, 56)), ("Ts", "mr--slab_d", (40, 46))]:
        _write(t1[a:b, ::2, ::2], root / f"images{part}" / f"{name}.nii.gz")
        _write(labels[a:b, ::2, ::2], root / f"labels{part}" / f"{name}.nii.gz")
    return root


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """A tiny SAM (128 px) as a plain checkpoint and with an e_sem decoder in micro-sam's joint layout."""
    root = tmp_path_factory.mktemp("models")
    sam = get_tiny_sam(config=get_tiny_config(128))
    decoder = get_unetr_decoder(sam.image_encoder, out_channels=2, initial_features=4)
    return {"plain": export_sam(sam, root / "tiny.pt"),
            "joint": export_sam_with_decoder(sam, decoder.state_dict(), root / "tiny_joint.pt")}


def _read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_cli_train_predict_evaluate_2d(brain_dataset, tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train-semantic", "--data", str(brain_dataset), "--classes", "4", "--checkpoint",
                 str(tiny_checkpoints["plain"]), "--decoder", "none", "--decoder-features", "4", "--iterations", "3",
                 "--val-every", "3", "--val-fraction", "0.34", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    assert "a new decoder" in capsys.readouterr().out
    assert (out / "best.pt").is_file() and json.loads((out / "history.json").read_text())[-1]["iteration"] == 3
    assert main(["predict-semantic", "--model", str(out / "best.pt"), "--images", str(brain_dataset / "imagesTs"),
                 "--out", str(tmp_path / "predictions"), "--device", "cpu"]) == 0
    predicted = sitk.ReadImage(str(tmp_path / "predictions" / "mr--slab_d.nii.gz"))
    reference = sitk.ReadImage(str(brain_dataset / "imagesTs" / "mr--slab_d.nii.gz"))
    assert predicted.GetSize() == reference.GetSize() and predicted.GetSpacing() == reference.GetSpacing()
    assert main(["evaluate", "semantic", "--model", f"tiny={out / 'best.pt'}", "--images",
                 str(brain_dataset / "imagesTs"), "--labels", str(brain_dataset / "labelsTs"), "--out",
                 str(tmp_path / "eval"), "--classes", "1", "2", "3", "--device", "cpu"]) == 0
    rows = _read_csv(tmp_path / "eval" / "semantic.csv")
    assert {(r["model"], r["image"], r["class"]) for r in rows} == {("tiny", "mr--slab_d", c) for c in "123"}
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    assert (tmp_path / "eval" / "predictions" / "tiny" / "mr--slab_d.nii.gz").is_file()


def test_cli_train_3d_from_joint_checkpoint(brain_dataset, tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "run3d"
    assert main(["train-semantic", "--data", str(brain_dataset), "--classes", "4", "--ndim", "3", "--model",
                 str(tiny_checkpoints["joint"]), "--patch-depth", "2", "--iterations", "2", "--val-every", "2",
                 "--image-size", "64", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    assert "with the decoder stored with" in capsys.readouterr().out
    assert main(["predict-semantic", "--model", str(out / "best.pt"), "--images", str(brain_dataset / "imagesTs"),
                 "--out", str(tmp_path / "predictions"), "--device", "cpu"]) == 0
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "predictions" / "mr--slab_d.nii.gz")))
    assert predicted.shape == (6, 59, 50) and predicted.max() < 4


def test_evaluate_semantic_needs_one_source(brain_dataset, tmp_path, capsys):
    assert main(["evaluate", "semantic", "--labels", str(brain_dataset / "labelsTs"), "--out",
                 str(tmp_path)]) != 0
    assert "--predictions or --model" in capsys.readouterr().err


def test_nnunet_export_writes_the_same_split(brain_dataset, tmp_path, capsys):
    assert main(["export-nnunet", "--data", str(brain_dataset), "--out", str(tmp_path), "--dataset-id", "501",
                 "--name", "IcbmTest", "--classes", "4", "--class-names", *CLASSES, "--val-fraction", "0.34"]) == 0
    folder = tmp_path / "Dataset501_IcbmTest"
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "gm": 1, "wm": 2, "other": 3}
    assert meta["channel_names"] == {"0": "image"} and meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [
        f"mr--slab_{c}_0000.nii.gz" for c in "abc"]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [f"mr--slab_{c}.nii.gz" for c in "abc"]
    assert [p.name for p in (folder / "imagesTs").iterdir()] == ["mr--slab_d_0000.nii.gz"]
    split = get_split_records(brain_dataset, 0.34, 0)
    fold = json.loads((folder / "splits_final.json").read_text())
    stems = {part: sorted(r.image.split("/")[-1][:-len(".nii.gz")] for r in split[part]) for part in ("train", "val")}
    assert [{key: sorted(value) for key, value in fold[0].items()}] == [stems] and len(stems["val"]) == 1
    # intensities and geometry are the originals (nnU-Net normalises itself)
    exported = sitk.ReadImage(str(folder / "imagesTr" / "mr--slab_a_0000.nii.gz"))
    original = sitk.ReadImage(str(brain_dataset / "imagesTr" / "mr--slab_a.nii.gz"))
    assert exported.GetSpacing() == original.GetSpacing()
    assert np.array_equal(sitk.GetArrayFromImage(exported), sitk.GetArrayFromImage(original))
    check_nnunet_dataset(folder)
    # the checker catches what nnU-Net's verify_dataset_integrity would
    meta["numTraining"] = 4
    (folder / "dataset.json").write_text(json.dumps(meta))
    (folder / "labelsTr" / "mr--slab_b.nii.gz").unlink()
    with pytest.raises(DataError, match=r"numTraining is 4 but imagesTr holds 3(.|\n)*slab_b: missing"):
        check_nnunet_dataset(folder)


def test_nnunet_export_rgb_and_errors(tmp_path):
    generator = np.random.default_rng(0)
    for name in ("derm--a", "derm--b", "derm--c"):
        _write(generator.integers(0, 255, (24, 32, 3), dtype=np.uint8), tmp_path / "data" / "images" / f"{name}.png",
               rgb=True)
        _write((generator.random((24, 32)) > 0.5).astype(np.uint8), tmp_path / "data" / "labels" / f"{name}.png")
    folder = export_nnunet_dataset(tmp_path / "data", tmp_path / "raw", 7, "Derm", 2, val_fraction=0.34)
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "R", "1": "G", "2": "B"} and meta["numTraining"] == 3
    assert {p.name for p in (folder / "imagesTr").iterdir()} >= {"derm--a_0000.nii.gz", "derm--a_0002.nii.gz"}
    check_nnunet_dataset(folder)
    with pytest.raises(InputError, match="three digits"):
        export_nnunet_dataset(tmp_path / "data", tmp_path / "raw", 1000, "Derm", 2)
    with pytest.raises(DataError, match="label id 1 but 1 classes"):
        export_nnunet_dataset(tmp_path / "data", tmp_path / "raw2", 8, "Derm", 1, class_names=[])
