"""`medicosam segment` and `medicosam models` end to end, and their errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medicosam.cli import main
from medicosam.models.checkpoint import export_sam
from medicosam.models.config import build_sam, get_tiny_config
from medicosam_training.sample_data import get_nilearn_icbm152


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    export_sam(build_sam(get_tiny_config()), path)
    return path


@pytest.fixture(scope="module")
def t1_path():
    return str(get_nilearn_icbm152("t1"))


def _segment(t1_path, tiny_checkpoint, out, *extra):
    return main(["segment", t1_path, "--checkpoint", str(tiny_checkpoint), "--allow-custom", "--out", str(out),
                 *extra])


def test_segment_writes_mask_on_the_input_grid(t1_path, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "mask.nii.gz"
    assert _segment(t1_path, tiny_checkpoint, out, "--point", "0,-20,10", "--neg-point", "5,-20,10",
                    "--propagate", "--max-slices", "2") == 0
    image, mask = sitk.ReadImage(t1_path), sitk.ReadImage(str(out))
    assert mask.GetSize() == image.GetSize()
    assert np.allclose(mask.GetOrigin(), image.GetOrigin()) and np.allclose(mask.GetDirection(), image.GetDirection())
    array = sitk.GetArrayFromImage(mask)
    # The point (R, A, S) = (0, -20, 10) lies on axial slice k where S = 10.
    k = int(round(image.TransformPhysicalPointToContinuousIndex((0.0, 20.0, 10.0))[2]))
    assert set(np.flatnonzero(array.any(axis=(1, 2)))) <= set(range(k - 2, k + 3))
    assert f"prompted on [{k}]" in capsys.readouterr().out


def test_segment_with_box_in_voxel_coordinates(t1_path, tiny_checkpoint, tmp_path):
    out = tmp_path / "box.nrrd"
    assert _segment(t1_path, tiny_checkpoint, out, "--ijk", "--box", "60,80,90", "--box", "120,150,90") == 0
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert set(np.flatnonzero(array.any(axis=(1, 2)))) <= {90}


def test_segment_fast_path_matches_the_reference_path(t1_path, tiny_checkpoint, tmp_path):
    masks = []
    for name, extra in (("fast", ()), ("reference", ("--no-fast",))):
        out = tmp_path / f"{name}.nii.gz"
        assert _segment(t1_path, tiny_checkpoint, out, "--ijk", "--box", "60,80,90", "--box", "120,150,90",
                        *extra) == 0
        masks.append(sitk.GetArrayFromImage(sitk.ReadImage(str(out))).astype(bool))
    assert masks[1].any()
    assert (masks[0] & masks[1]).sum() / (masks[0] | masks[1]).sum() >= 0.98


@pytest.mark.parametrize("args, message", [
    (["--point", "500,0,0"], "outside"),
    (["--ijk", "--box", "60,80,90", "--box", "60,150,90"], "empty box"),
    (["--point", "1,2"], "three comma-separated numbers"),
])
def test_segment_bad_prompts(t1_path, tiny_checkpoint, tmp_path, capsys, args, message):
    assert _segment(t1_path, tiny_checkpoint, tmp_path / "m.nii.gz", *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.nii.gz").exists()


def test_segment_bad_files_and_models(t1_path, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not an image")
    assert _segment(str(garbage), tiny_checkpoint, tmp_path / "m.nii.gz", "--point", "0,0,0") == 2
    assert "garbage.nii.gz" in capsys.readouterr().err

    four_d = tmp_path / "4d.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([sitk.Image([8, 8, 8], sitk.sitkUInt8)] * 3), str(four_d))
    assert _segment(str(four_d), tiny_checkpoint, tmp_path / "m.nii.gz", "--ijk", "--point", "1,1,1") == 2
    assert "4D image" in capsys.readouterr().err

    assert main(["segment", t1_path, "--model", "no_such_model", "--point", "0,-20,10",
                 "--out", str(tmp_path / "m.nii.gz")]) == 2
    assert "sam_vit_b" in capsys.readouterr().err  # the error lists the known names

    monkeypatch.setenv("MEDICOSAM_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["segment", t1_path, "--model", "sam_vit_b", "--offline", "--point", "0,-20,10",
                 "--out", str(tmp_path / "m.nii.gz")]) == 2
    assert "offline" in capsys.readouterr().err.lower()


def test_models_list_path_and_remove(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDICOSAM_CACHE_DIR", str(tmp_path))
    assert main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    assert "medicosam_vit_b" in listing and "not downloaded" in listing
    assert main(["models", "path", "sam_vit_b"]) == 0
    path = capsys.readouterr().out.strip()
    assert path.startswith(str(tmp_path))
    assert main(["models", "remove", "sam_vit_b"]) == 0
    assert "not cached" in capsys.readouterr().out
