"""`medicosam segment` and `medicosam models` end to end, and their errors for bad input."""

from __future__ import annotations

import re
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
    """`tiny_checkpoint` is MedicoSAM's own export: no --allow-custom (test_one_allow_custom_rule...)."""
    return main(["segment", t1_path, "--checkpoint", str(tiny_checkpoint), "--out", str(out), *extra])


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
    # Ranges are checked once, by the config dataclasses: the command's error names the flag the user typed,
    # Python's the field.
    for extra, message in ((["--iou-threshold", "1.5"], "--iou-threshold 1.5 is outside [0, 1]"),
                           (["--max-slices", "-1"], "--max-slices -1 is negative: use 0 or more, or leave it unset"),
                           (["--box-extension", "-0.1"], "--box-extension -0.1 is negative"),
                           (["--slice-range", "9", "3"], "--slice-range (9, 3) must be (first, last)")):
        assert segment(tmp_path / "m.nii.gz", *extra) == 2
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"medicosam: error: {message}")
        assert not re.search(r"\b(iou_threshold|max_slices|box_extension|slice_range)\b|None", err)
    with pytest.raises(InputError, match="max_slices -1 is negative"):
        PropagationConfig(max_slices=-1)
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
    assert f'{uids["CT2N"]} "Scout" (2 files)' in err and "with --series UID." in err
    assert "Python" not in err and "series_uid" not in err and "Supported formats" not in err  # the user's words
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
    from medicosam.models.registry import MODELS

    monkeypatch.setenv("MEDICOSAM_CACHE_DIR", str(tmp_path))
    (tmp_path / "url").mkdir()
    (tmp_path / "url" / "0123456789abcdef-weights.pth.part").write_bytes(b"x")  # an interrupted URL download
    assert main(["models", "list"]) == 0
    cache_line, header, *rows = capsys.readouterr().out.splitlines()
    assert cache_line == f"cache: {tmp_path} (MEDICOSAM_CACHE_DIR moves it)"
    assert header.split() == ["NAME", "ARCH", "STATE", "DESCRIPTION"]
    assert [row.split()[0] for row in rows] == [*MODELS, "url/0123456789abcdef-weights.pth"]
    assert rows[-1].split()[1:3] == ["?", "partial"]
    for column in ("ARCH", "STATE", "DESCRIPTION"):  # every row, SAM2's `hiera_b+` included, starts each column here
        start = header.index(column)
        assert all(row[start - 2:start] == "  " and row[start] != " " for row in rows), column
    assert main(["models", "path", "sam_vit_b"]) == 0
    path = capsys.readouterr().out.strip()
    assert path.startswith(str(tmp_path))
    assert main(["models", "remove", "sam_vit_b"]) == 0
    assert "not cached" in capsys.readouterr().out


def test_models_alone_names_the_actions(capsys):
    assert main(["models"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["medicosam: error: `medicosam models` needs an action: `list` (no name), or "
                                        "`download`, `verify`, `remove` or `path` followed by model names, e.g. "
                                        "`medicosam models list`"]
    with pytest.raises(SystemExit):
        main(["models", "path"])  # the actions that take names need one
    assert "NAME" in capsys.readouterr().err


def test_one_allow_custom_rule_for_every_command(t1_path, tiny_checkpoint, tmp_path, capsys):
    """MedicoSAM's own exports load in every command without --allow-custom; a tiny SAM saved by anything
    else needs it in every command (`segment` and `serve` refused the demo's model, `train` and `evaluate`
    took any file)."""
    import torch

    from medicosam.models.config import build_sam, get_tiny_config

    foreign = tmp_path / "foreign.pt"
    torch.save(build_sam(get_tiny_config()).state_dict(), foreign)  # what another tool would write
    data = tmp_path / "data"
    for folder in ("images", "labels"):
        (data / folder).mkdir(parents=True)
        image = sitk.GetImageFromArray(np.tile(np.arange(64, dtype=np.uint8), (4, 64, 1)))
        sitk.WriteImage(image if folder == "images" else image > 40, str(data / folder / "v.nii.gz"))
    out = tmp_path / "m.nii.gz"
    assert _segment(t1_path, tiny_checkpoint, out, "--ijk", "--point", "90,100,90") == 0
    commands = {
        "segment": ["segment", t1_path, "--ijk", "--point", "90,100,90", "--out", str(out), "--checkpoint"],
        "serve": ["serve", "--device", "cpu", "--checkpoint"],
        "train": ["train", "--data", str(tmp_path / "no_data"), "--out", str(tmp_path / "run"), "--checkpoint"],
        "evaluate": ["evaluate", "interactive-3d", "--images", str(data / "images"), "--labels", str(data / "labels"),
                     "--out", str(tmp_path / "eval"), "--quiet", "--model"],
        "train-semantic": ["train-semantic", "--data", str(data), "--classes", "2", "--out", str(tmp_path / "sem"),
                           "--quiet", "--checkpoint"],
    }
    for name, command in commands.items():
        assert main([*command, str(foreign)]) == 2, name
        err = capsys.readouterr().err
        assert "in a file MedicoSAM did not write" in err and "pass --allow-custom" in err, name
    assert main([*commands["segment"], str(foreign), "--allow-custom"]) == 0
    assert main([*commands["train"], str(foreign), "--allow-custom"]) == 2  # past the model: the data is missing
    assert "no_data" in capsys.readouterr().err


def test_summary_and_propagation_bar(t1_path, tiny_checkpoint, tmp_path, capsys):
    """"1 slice", named by the view (the axial view chose array axis 0); the bar's total does not jump when
    propagation stops early (it ended as 2/2 after 0/94)."""
    out = tmp_path / "m.nii.gz"
    assert _segment(t1_path, tiny_checkpoint, out, "--ijk", "--box", "60,80,90", "--box", "120,150,90") == 0
    summary = capsys.readouterr().out
    assert " on 1 axial slice (array axis 0, slice 90), prompted on [90]" in summary
    assert _segment(t1_path, tiny_checkpoint, out, "--ijk", "--point", "90,100,90", "--view", "coronal") == 0
    assert "coronal slice (array axis 1, slice 100)" in capsys.readouterr().out
    assert _segment(t1_path, tiny_checkpoint, out, "--ijk", "--box", "60,80,90", "--box", "120,150,90",
                    "--propagate") == 0
    captured = capsys.readouterr()
    n_slices = len(np.flatnonzero(sitk.GetArrayFromImage(sitk.ReadImage(str(out))).any(axis=(1, 2))))
    assert f" on {n_slices} axial slice{'' if n_slices == 1 else 's'} (array axis 0, slice" in captured.out
    counts = [tuple(map(int, m)) for m in re.findall(r"(\d+)/(\d+) \[", captured.err)]
    assert counts and counts[-1][0] < counts[-1][1], counts  # the tiny model's propagation stops early...
    assert {total for _, total in counts} == {counts[0][1]}  # ...and the bar keeps its total


def test_help_lists_every_output_and_each_default_once(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ("--out FILE|FOLDER what to write, on the image's grid: a label image (.nii.gz, .nii, .nrrd, .mha), a "
            "Slicer segmentation (.seg.nrrd) or, from a DICOM series, DICOM SEG (.dcm, or an existing folder to "
            "write it in)") in text
    assert "(default: Slicer's first segment colour) --" in text and "(default: )" not in text


def test_spaced_coordinates_get_the_fix_and_threads_go_anywhere(t1_path, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "m.nii.gz"
    for point in (["28", "-10", "30"], ["28,", "-10,", "30"]):
        with pytest.raises(SystemExit) as exit_:
            _segment(t1_path, tiny_checkpoint, out, "--point", *point)
        assert exit_.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"medicosam: error: unrecognized arguments: {' '.join(point[1:])} (coordinates are comma-separated: "
            "--point 28,-10,30)")
    assert main(["models", "list", "--threads", "1"]) == 0  # read as `medicosam --threads 1 models list`
    capsys.readouterr()
    for threads in (["--threads", "0"], ["--threads=0"]):  # checked like the option before the command
        assert _segment(t1_path, tiny_checkpoint, out, "--ijk", "--point", "90,100,90", *threads) == 2
        assert capsys.readouterr().err.strip() == "medicosam: error: --threads 0: use 1 or more"
    assert not out.exists()


def test_ctrl_c_in_segment_is_one_line_and_writes_nothing(t1_path, tiny_checkpoint, tmp_path):
    import os
    import signal
    import threading
    import time

    out = tmp_path / "mask.nii.gz"
    process = subprocess.Popen([sys.executable, "-m", "medicosam.cli", "--threads", "1", "segment", t1_path,
                                "--checkpoint", str(tiny_checkpoint), "--point", "0,-20,10", "--propagate",
                                "--iou-threshold", "0", "--out", str(out)],
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True,
                               # a shell's background job starts with SIGINT ignored: Ctrl-C must reach Python
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    err = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: process.stderr.read(1), "")))
    reader.start()
    deadline = time.monotonic() + 300
    while "propagating" not in "".join(err) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # as Ctrl-C in a terminal, mid-propagation
    process.wait(timeout=120)
    reader.join()
    text = "".join(err)
    assert process.returncode == 130 and "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert [line for line in text.splitlines() if line.startswith("medicosam:")] == ["medicosam: stopped (Ctrl-C)"]
    assert not out.exists() and not list(tmp_path.iterdir())
