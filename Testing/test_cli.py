"""`medicosam segment` and `medicosam models` end to end, and their errors for bad input."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from medicosam.cli import main
from medicosam.errors import InputError
from medicosam.propagation import PropagationConfig
from medicosam.segment import SegmentRequest
from medicosam_training.sample_data import get_nilearn_icbm152

DICOM_SERIES = Path(get_testdata_file("CT_small.dcm", download=False)).parent / "dicomdirtests/98892001"


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
    out = capsys.readouterr().out
    assert f"prompted on [{k}]" in out
    # Why each side stopped: the tiny random model's masks end early (empty) or at the 2-slice limit.
    stops = out.split("propagation stopped ")[1].strip().split("; ")
    assert [stop.split(":")[0] for stop in stops] == ["down", "up"]
    assert all(any(r in stop for r in ("empty mask", "IoU", "slice limit")) for stop in stops), stops


def test_every_propagation_setting_reaches_the_command(t1_path, tiny_checkpoint, tmp_path, capsys):
    """Options derived from PropagationConfig: one side only, no IoU stop, a slice range."""
    out = tmp_path / "mask.nii.gz"
    assert _segment(t1_path, tiny_checkpoint, out, "--ijk", "--box", "60,80,90", "--box", "120,150,90", "--propagate",
                    "--direction", "up", "--iou-threshold", "0", "--mode", "box", "--box-extension", "3",
                    "--slice-range", "85", "93") == 0
    written = np.flatnonzero(sitk.GetArrayFromImage(sitk.ReadImage(str(out))).any(axis=(1, 2)))
    assert set(written) <= set(range(90, 94)) and 90 in written
    stops = capsys.readouterr().out.split("propagation stopped ")[1]
    assert "down: not requested" in stops


def test_negative_coordinates_parse_as_values(t1_path, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "m.nii.gz"
    assert _segment(t1_path, tiny_checkpoint, out, "--point", "-5,-20,10", "--neg-point", "-1.5,-20,10") == 0
    image = sitk.ReadImage(t1_path)
    k = int(round(image.TransformPhysicalPointToContinuousIndex((5.0, 20.0, 10.0))[2]))
    assert f"prompted on [{k}]" in capsys.readouterr().out


def test_box_corners_on_two_slices_are_named_in_a_warning(t1_path, tiny_checkpoint, tmp_path, caplog):
    out = tmp_path / "box.nrrd"
    with caplog.at_level("WARNING", logger="medicosam.segment"):
        assert _segment(t1_path, tiny_checkpoint, out, "--ijk", "--box", "60,80,88", "--box", "120,150,92") == 0
    assert "box corners fall on slices [88, 92]" in caplog.text and "drawn on slice 90" in caplog.text


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
    (["--point", "1,2"], "three finite comma-separated numbers"),
    (["--ijk", "--point", "nan,100,90"], "three finite comma-separated numbers"),
    (["--point", "0,inf,10"], "three finite comma-separated numbers"),
    (["--ijk", "--point", "100,100,90", "--neg-point", "100,110,80"], "slice(s) [80] along array axis 0 hold only "
     "negative points"),
])
def test_segment_bad_prompts(t1_path, tiny_checkpoint, tmp_path, capsys, args, message):
    assert _segment(t1_path, tiny_checkpoint, tmp_path / "m.nii.gz", *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_arguments_and_destination_are_checked_before_the_model(t1_path, tmp_path, capsys, monkeypatch):
    """An empty cache and --offline: any model work would fail with an offline error instead."""
    monkeypatch.setenv("MEDICOSAM_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "file").write_text("")

    def segment(out, *extra):
        return main(["segment", t1_path, "--model", "sam_vit_b", "--offline", "--point", "0,-20,10",
                     "--out", str(out), *extra])

    for out, message in ((tmp_path / "no" / "m.nii.gz", "does not exist"),
                         (tmp_path / "file" / "m.nii.gz", "does not exist"),
                         (tmp_path / "m.nii.gz.nii.gz", "doubled suffix"),
                         (tmp_path / "m.png", "use one of .nii, .nii.gz, .nrrd, .mha")):
        assert segment(out) == 2
        err = capsys.readouterr().err
        assert message in err and "offline" not in err.lower()
    for extra, message in ((["--mode", "foo"], "invalid choice: 'foo'"), (["--window", "ct_brain"], "invalid choice"),
                           (["--direction", "left"], "invalid choice")):
        with pytest.raises(SystemExit) as exit_:
            segment(tmp_path / "m.nii.gz", *extra)
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    # Ranges are checked once, by the config dataclasses: the same one-line error for the command and Python.
    for extra, message in ((["--iou-threshold", "1.5"], "iou_threshold 1.5 is outside [0, 1]"),
                           (["--max-slices", "-1"], "max_slices -1 is negative"),
                           (["--box-extension", "-0.1"], "box_extension -0.1 is negative"),
                           (["--slice-range", "9", "3"], "slice_range (9, 3) must be (first, last)")):
        assert segment(tmp_path / "m.nii.gz", *extra) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(InputError, match="unknown propagation mode 'foo'"):
        PropagationConfig(mode="foo")
    with pytest.raises(InputError, match="unknown view 'oblique'"):
        SegmentRequest(image=t1_path, out=str(tmp_path / "m.nii.gz"), model="sam_vit_b", view="oblique")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["file"]  # nothing written


def test_all_nan_volume_is_refused_before_the_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDICOSAM_CACHE_DIR", str(tmp_path / "cache"))
    image = sitk.GetImageFromArray(np.full((4, 8, 8), np.nan, np.float32))
    sitk.WriteImage(image, str(tmp_path / "nan.nrrd"))
    assert main(["segment", str(tmp_path / "nan.nrrd"), "--model", "sam_vit_b", "--offline", "--ijk",
                 "--point", "4,4,2", "--out", str(tmp_path / "m.nii.gz")]) == 2
    assert "no finite intensity" in capsys.readouterr().err


def test_dicom_folder_with_two_series_needs_series(tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "dicom"
    folder.mkdir()
    for series in ("CT5N", "CT2N"):
        for path in (DICOM_SERIES / series).iterdir():
            shutil.copy(path, folder / f"{series}_{path.name}")
    uids = {series: pydicom.dcmread(next((DICOM_SERIES / series).iterdir())).SeriesInstanceUID
            for series in ("CT5N", "CT2N")}
    out = tmp_path / "m.nii.gz"
    assert _segment(str(folder), tiny_checkpoint, out, "--ijk", "--point", "8,8,2") == 2
    err = capsys.readouterr().err
    assert f'{uids["CT5N"]} "SmartScore - Gated 0.5 sec" (5 files)' in err
    assert f'{uids["CT2N"]} "Scout" (2 files)' in err and "--series UID" in err
    assert _segment(str(folder), tiny_checkpoint, out, "--ijk", "--point", "8,8,2", "--series", uids["CT5N"]) == 0
    assert sitk.ReadImage(str(out)).GetSize() == (16, 16, 5)


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_registering_the_commands_imports_no_heavy_package():
    """`medicosam --help` and `models path` must not wait for torch (seconds on a busy machine)."""
    heavy = ("torch", "segment_anything", "matplotlib", "nilearn", "monai", "tensorboard")
    result = _run_python(
        "import sys, medicosam.cli\n"
        "medicosam.cli.get_parser()\n"
        "assert medicosam.cli.main(['models', 'path', 'sam_vit_b']) == 0\n"
        f"print('loaded:', [m for m in {heavy!r} if m in sys.modules])\n")
    assert result.returncode == 0, result.stderr
    assert "loaded: []" in result.stdout
    assert "evaluate" in subprocess.run([sys.executable, "-m", "medicosam.cli", "--help"], capture_output=True,
                                        text=True, timeout=300).stdout


@pytest.mark.parametrize("command, missing", [
    (["evaluate", "interactive-2d", "--images", "IMAGES", "--labels", "LABELS", "--model", "sam_vit_b"],
     "matplotlib"),
    (["demo"], "nilearn"),
])
def test_commands_of_the_training_extra_name_it_when_it_is_missing(tmp_path, command, missing):
    """A core-only install: the package is importable, its extra's packages are not."""
    out = tmp_path / "out"
    argv = [*command, "--out", str(out)]
    result = _run_python(f"import sys; sys.modules[{missing!r}] = None\n"
                         f"from medicosam.cli import main; sys.exit(main({argv!r}))")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f'medicosam: error: this command needs {missing} from the training extra: pip install "medicosam[training]"']
    assert not out.exists()  # refused before any work


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
