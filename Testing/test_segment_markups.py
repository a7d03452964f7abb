"""`medicosam segment --markups/--roi` with files as Slicer 5.x writes them, on real MR under a rotated,
anisotropic grid: the same masks as the equivalent `--point`/`--box` call, and clear errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers_session import get_rotation
from slicer_markups import write_point_list, write_roi

from medicosam.cli import main
from medicosam.geometry import get_ijk_to_ras_from_sitk, get_slice_axis, get_voxel_index, ijk_to_ras
from medicosam.markups import Markups, MarkupsPoint, MarkupsROI, read_markups_file
from medicosam_training.sample_data import get_itk_examples_dir, get_nilearn_icbm152


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    """The real 2 x 2 x 3 mm KmeansTest T1, turned 15 degrees about the S axis (axial view still aligned)."""
    image = sitk.ReadImage(str(get_itk_examples_dir() / "KmeansTest_T1UCharRaw.nii.gz"))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    image.SetDirection(tuple((get_rotation((0.0, 0.0, 15.0)) @ direction).ravel()))
    path = tmp_path_factory.mktemp("mr") / "t1_rotated.nrrd"
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def matrix(image_path):
    return get_ijk_to_ras_from_sitk(sitk.ReadImage(str(image_path)))


@pytest.fixture(scope="module")
def axis(matrix):
    """The array axis of the axial slices (J in this file: its rows are K, its columns I)."""
    return get_slice_axis((0.0, 0.0, 1.0), matrix)


def ras(matrix, axis, index, x, y, offset=(0.2, -0.3, 0.1)):
    """World RAS of pixel (x, y) of slice `index` along `axis`, moved within its voxel by `offset` (ijk)."""
    return ijk_to_ras(np.asarray(get_voxel_index(index, x, y, axis), float)[::-1] + offset, matrix)


def slices_of(mask, axis):
    return set(np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))).tolist())


def triplet(values):
    return ",".join(f"{v:.6f}" for v in values)


def segment(image_path, checkpoint, out, *extra):
    return main(["segment", str(image_path), "--checkpoint", str(checkpoint), "--allow-custom", "--no-fast",
                 "--out", str(out), *extra])


def read_mask(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(bool)


def test_markups_points_in_lps_and_ras_give_the_same_mask_as_point_options(image_path, tiny_checkpoint, matrix, axis,
                                                                           tmp_path):
    positive, negative = ras(matrix, axis, 60, 64, 30), ras(matrix, axis, 60, 84, 32)
    plus = write_point_list(tmp_path / "F.mrk.json", [positive], "LPS")
    minus = write_point_list(tmp_path / "F-negative.mrk.json", [negative], "RAS")
    assert segment(image_path, tiny_checkpoint, tmp_path / "a.nii.gz", "--markups", str(plus),
                   "--markups", str(minus)) == 0
    assert segment(image_path, tiny_checkpoint, tmp_path / "b.nii.gz", "--point", triplet(positive),
                   "--neg-point", triplet(negative)) == 0
    a, b = read_mask(tmp_path / "a.nii.gz"), read_mask(tmp_path / "b.nii.gz")
    np.testing.assert_array_equal(a, b)
    assert slices_of(a, axis) <= {60}


def test_roi_gives_the_same_mask_as_the_box_option(image_path, tiny_checkpoint, matrix, axis, tmp_path):
    axes = matrix[:3, :3] / np.linalg.norm(matrix[:3, :3], axis=0)  # the ROI drawn in the volume's own axes
    center = ras(matrix, axis, 60, 64, 30, offset=(0.0, 0.0, 0.0))
    roi = write_roi(tmp_path / "R.mrk.json", center, (40.0, 0.0, 30.0), axes, "LPS")  # i, j (the normal), k
    corners = [center - axes @ np.array([20.0, 0.0, 15.0]), center + axes @ np.array([20.0, 0.0, 15.0])]
    assert segment(image_path, tiny_checkpoint, tmp_path / "roi.nii.gz", "--roi", str(roi)) == 0
    assert segment(image_path, tiny_checkpoint, tmp_path / "box.nii.gz", "--box", triplet(corners[0]),
                   "--box", triplet(corners[1])) == 0
    a, b = read_mask(tmp_path / "roi.nii.gz"), read_mask(tmp_path / "box.nii.gz")
    assert b.any()
    np.testing.assert_array_equal(a, b)


def test_segment_in_roi_writes_only_the_slices_the_roi_covers(image_path, tiny_checkpoint, matrix, axis, tmp_path):
    center = ras(matrix, axis, 60, 64, 30, offset=(0.0, 0.0, 0.0))
    roi = write_roi(tmp_path / "R.mrk.json", center, (50.0, 40.0, 13.0), get_rotation((0.0, 0.0, 20.0)))
    out = tmp_path / "in_roi.nii.gz"
    assert segment(image_path, tiny_checkpoint, out, "--roi", str(roi), "--in-roi", "--propagate") == 0
    slices = slices_of(read_mask(out), axis)
    assert slices and slices <= set(range(57, 64))  # 13 mm at 2 mm around slice 60: 56.75..63.25


@pytest.mark.parametrize("case, message", [
    ("malformed", "is not Slicer's markups-schema"),
    ("outside", "does not overlap the volume"),
    ("undefined", "no defined control point"),
    ("points_as_roi", "--roi needs a file holding ROIs only"),
    ("empty_roi", "is empty across the slices"),  # as a prompt and as --in-roi bounds alike, as an empty --box
    ("empty_roi_in_roi", "is empty across the slices"),
    ("too_many_points", "control points, more than the 1000"),
    ("nested", "cannot read it as a Slicer markups file"),
])
def test_bad_markups_files_are_one_line_errors(image_path, tiny_checkpoint, matrix, axis, tmp_path, capsys, case,
                                              message):
    files = tmp_path / "files"
    files.mkdir()
    point = ras(matrix, axis, 60, 64, 30)
    if case == "malformed":
        path = write_point_list(files / "p.mrk.json", [point])
        path.write_text(json.dumps({"markups": json.loads(path.read_text())["markups"]}))
        args = ["--markups", str(path)]
    elif case == "outside":
        args = ["--roi", str(write_roi(files / "r.mrk.json", point + 900.0, (10.0, 10.0, 10.0)))]
    elif case == "undefined":
        args = ["--markups", str(write_point_list(files / "p.mrk.json", [point, point], statuses=["undefined",
                                                                                                  "preview"]))]
    elif case.startswith("empty_roi"):
        args = ["--roi", str(write_roi(files / "r.mrk.json", point, (0.0, 0.0, 0.0)))]
        args += ["--in-roi"] if case.endswith("in_roi") else ["--markups", str(write_point_list(files / "p.mrk.json",
                                                                                                 [point]))]
    elif case == "too_many_points":
        args = ["--markups", str(write_point_list(files / "p.mrk.json", [point] * 200_000))]
    elif case == "nested":
        (files / "p.mrk.json").write_text("[" * 100_000 + "]" * 100_000)
        args = ["--markups", str(files / "p.mrk.json")]
    else:
        args = ["--roi", str(write_point_list(files / "p.mrk.json", [point]))]
    out = tmp_path / "out"
    out.mkdir()
    assert segment(image_path, tiny_checkpoint, out / "m.nii.gz", *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert list(out.iterdir()) == []


DOCS_EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def test_the_docs_example_files_prompt_as_the_docs_say(tiny_checkpoint, tmp_path, capsys):
    """docs/examples: a point list, a negative list and an ROI in Slicer 5.6's layout (the fields the
    test writer above puts, in its order), on the MNI T1 the demo uses (1 mm, axial slice k = S + 72)."""
    files = [DOCS_EXAMPLES / f"white-matter{suffix}.mrk.json" for suffix in ("", "-negative", "-roi")]
    written = {kind: json.loads(path.read_text())["markups"][0] for kind, path in
               (("Fiducial", write_point_list(tmp_path / "F.mrk.json", [(0.0, 0.0, 0.0)])),
                ("ROI", write_roi(tmp_path / "R.mrk.json", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))))}
    for path in files:
        markup = json.loads(path.read_text())["markups"][0]
        reference = written[markup["type"]]
        assert list(markup) == list(reference) and list(markup["display"]) == list(reference["display"])
        assert [list(point) for point in markup["controlPoints"]] == \
            [list(reference["controlPoints"][0])] * len(markup["controlPoints"])
    assert read_markups_file(files[0]) == Markups([MarkupsPoint((28.0, -10.0, 30.0), True),
                                                   MarkupsPoint((24.0, -20.0, 30.0), True)])
    assert read_markups_file(files[1]) == Markups([MarkupsPoint((45.0, -10.0, 30.0), False)])
    assert read_markups_file(files[2]) == Markups(rois=[MarkupsROI((28.0, -10.0, 30.0), (30.0, 40.0, 6.0))])

    common = ["segment", str(get_nilearn_icbm152("t1")), "--checkpoint", str(tiny_checkpoint), "--markups",
              str(files[0]), "--markups", str(files[1]), "--roi", str(files[2])]
    assert main([*common, "--in-roi", "--out", str(tmp_path / "in_roi.nii.gz")]) == 0
    assert "prompted on [99, 100, 101, 102, 103, 104, 105]" in capsys.readouterr().out  # S = 27..33
    assert main([*common, "--propagate", "--out", str(tmp_path / "propagated.nii.gz")]) == 0
    assert "prompted on [102]" in capsys.readouterr().out  # the points' slice, S = 30
    assert slices_of(read_mask(tmp_path / "propagated.nii.gz"), 0) <= set(range(99, 106))  # within the ROI
