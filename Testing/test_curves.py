"""Lasso (closed curve) and scribble (open curve) prompts: the placement rule, the effect's session and
`medicosam segment` with curve files as Slicer 5.x writes them, each against the same prompts given as
box + mask (lasso) or points (scribble).

The lasso's expected mask comes from matplotlib's point-in-polygon test, an implementation independent
of `prompts.get_polygon_mask`; the scribble's expected points are worked out by hand from the spacing.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import test_segment_markups as markups_files
from helpers_session import get_rotated_ijk_to_ras, get_test_volume, get_view_normal
from matplotlib.path import Path as PolygonPath
from slicer_markups import write_curve

from medicosam.effect.session import SegmentationSession
from medicosam.errors import DataError, InputError
from medicosam.geometry import get_voxel_index, ijk_to_ras
from medicosam.markups import Markups, MarkupsCurve, get_markup_prompts, read_markups_file
from medicosam.models.checkpoint import load_sam
from medicosam.normalization import get_intensity_window
from medicosam.predictor import VolumePredictor, get_volume_predictor
from medicosam.prompts import STROKE_MAX_POINTS, Prompts, get_polygon_mask, get_stroke_points
from medicosam.volume_io import read_volume

#: A pentagon with a notch, in (x, y) pixels of one slice: not convex, vertices off the pixel grid.
LASSO_XY = np.array([[50.3, 22.2], [70.6, 18.4], [78.2, 31.7], [64.1, 27.3], [66.4, 41.8], [52.7, 38.1]])


def get_expected_lasso(xy, shape):
    """(box, mask) of a lasso: pixel centres inside the polygon (matplotlib), and their bounding box."""
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    inside = PolygonPath(xy).contains_points(np.column_stack([cols.ravel(), rows.ravel()])).reshape(shape)
    ys, xs = np.nonzero(inside)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32), inside


def test_polygon_mask_is_the_pixel_centres_inside_the_lasso():
    box, expected = get_expected_lasso(LASSO_XY, (62, 128))
    mask = get_polygon_mask(LASSO_XY, (62, 128))
    np.testing.assert_array_equal(mask, expected)
    assert 0 < mask.sum() < (box[2] - box[0]) * (box[3] - box[1])  # the notch is left out
    np.testing.assert_array_equal(get_polygon_mask(LASSO_XY - [60.0, 0.0], (62, 128)),
                                  get_expected_lasso(LASSO_XY - [60.0, 0.0], (62, 128))[1])  # clipped at x = 0
    with pytest.raises(InputError, match="at least 3 points"):
        get_polygon_mask(LASSO_XY[:2], (62, 128))


def test_stroke_points_are_spaced_along_the_stroke_and_capped():
    points = get_stroke_points([[20.2, 10.1], [40.2, 10.1], [40.2, 30.1]], (50, 60))  # an L of 40 px
    np.testing.assert_array_equal(points, [[20, 10], [30, 10], [40, 10], [40, 20], [40, 30]])
    long = get_stroke_points([[0.0, 5.0], [599.0, 5.0]], (10, 600))
    assert len(long) == STROKE_MAX_POINTS and long[0].tolist() == [0, 5] and long[-1].tolist() == [599, 5]
    assert get_stroke_points([[3.2, 4.4], [3.3, 4.2]], (10, 10)).tolist() == [[3, 4]]  # a dot: one point
    clipped = get_stroke_points([[-20.0, 2.0], [5.0, 2.0]], (10, 10))
    assert clipped.tolist() == [[5, 2]]  # -20, -7.5 and 5: the points outside the slice are dropped
    with pytest.raises(InputError, match="outside the image"):
        get_stroke_points([[-20.0, 2.0], [-5.0, 2.0]], (10, 10))


MATRIX = get_rotated_ijk_to_ras()
#: The rotated MR of `medicosam segment`'s markups tests (fixtures) and how they run the command.
image_path, matrix, axis = markups_files.image_path, markups_files.matrix, markups_files.axis
segment, read_mask = markups_files.segment, markups_files.read_mask


def pixel_ras(index, xy, axis=0, grid=MATRIX):
    """World RAS of (x, y) pixel positions (fractions too) on slice `index` along `axis`."""
    row_axis, col_axis = (a for a in (0, 1, 2) if a != axis)
    found = []
    for x, y in xy:
        ijk = np.asarray(get_voxel_index(index, 0, 0, axis), float)[::-1]
        ijk[2 - col_axis], ijk[2 - row_axis] = x, y
        found.append(tuple(ijk_to_ras(ijk, grid)))
    return found


def test_session_prompts_a_lasso_as_box_plus_mask_and_a_scribble_as_points(tiny_sam, icbm152):
    volume = get_test_volume(icbm152)  # (36, 80, 70): slices along K are 80 x 70
    session = SegmentationSession(VolumePredictor(tiny_sam, volume, model_id="tiny"), MATRIX)
    reference = VolumePredictor(tiny_sam, volume, model_id="tiny")
    normal = get_view_normal(MATRIX, 0)
    xy = LASSO_XY - [20.0, 0.0]
    lasso = MarkupsCurve(tuple(pixel_ras(18, xy)), closed=True)
    assert session.set_markups(Markups(curves=[lasso]), normal) == [(0, 18)]
    box, mask = get_expected_lasso(xy, (80, 70))
    prompts = session.get_prompts()
    np.testing.assert_array_equal(prompts.box, box)
    np.testing.assert_array_equal(prompts.mask, mask)
    assert prompts.logits is None and len(prompts.points) == 0
    np.testing.assert_array_equal(session.update_preview().mask, reference.predict_mask(0, 18, Prompts(box=box,
                                                                                                       mask=mask)))
    session.apply()
    np.testing.assert_array_equal(session.get_prompts().mask, mask)  # the lasso is never replaced by refinement
    assert session.get_prompts().logits is None

    scribble = MarkupsCurve(tuple(pixel_ras(20, [[10.2, 60.1], [40.2, 60.1]])), closed=False, positive=False)
    plus = MarkupsCurve(tuple(pixel_ras(20, [[30.1, 20.2], [30.1, 40.2]])), closed=False)
    session.set_markups(Markups(curves=[lasso, plus, scribble]), normal)
    prompts = session.get_prompts((0, 20))
    np.testing.assert_array_equal(prompts.points, [[30, 20], [30, 30], [30, 40], [10, 60], [20, 60], [30, 60],
                                                   [40, 60]])
    np.testing.assert_array_equal(prompts.labels, [1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(session.update_preview().mask, reference.predict_mask(
        0, 20, Prompts(points=prompts.points, labels=prompts.labels)))


def test_a_lasso_takes_the_box_of_an_roi_on_its_slice_and_two_rois_on_one_slice_are_refused():
    from medicosam.markups import MarkupsROI

    xy = LASSO_XY - [20.0, 0.0]
    lasso = MarkupsCurve(tuple(pixel_ras(18, xy)), closed=True)
    roi_centre = pixel_ras(18, [[35.0, 30.0]])[0]
    axes = tuple(map(tuple, MATRIX[:3, :3] / np.linalg.norm(MATRIX[:3, :3], axis=0)))
    roi = MarkupsROI(roi_centre, (30.0, 30.0, 1.0), axes)
    prompts = get_markup_prompts(Markups(rois=[roi], curves=[lasso]), MATRIX, (36, 80, 70), 0)
    only_roi = get_markup_prompts(Markups(rois=[roi]), MATRIX, (36, 80, 70), 0)
    np.testing.assert_array_equal(prompts[18].box, only_roi[18].box)
    np.testing.assert_array_equal(prompts[18].mask, get_expected_lasso(xy, (80, 70))[1])
    with pytest.raises(InputError, match="two boxes"):
        get_markup_prompts(Markups(rois=[roi, roi]), MATRIX, (36, 80, 70), 0)


# medicosam segment with curve files ---------------------------------------------------------------


def get_cli_predictor(image_path, checkpoint):
    """The predictor `medicosam segment --no-fast` builds for the image (auto window, fp32 path)."""
    volume = read_volume(str(image_path))
    loaded = load_sam(str(checkpoint), device="cpu", allow_custom=True)
    return get_volume_predictor(loaded, volume.array, fast=False, window=get_intensity_window(volume.array, "auto"))


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_segment_with_a_lasso_file_gives_the_box_plus_mask_prediction(image_path, tiny_checkpoint, matrix, axis,
                                                                      tmp_path, system):
    vertices = pixel_ras(60, LASSO_XY, axis, matrix)
    lasso = write_curve(tmp_path / "lasso.mrk.json", vertices, closed=True, system=system)
    assert read_markups_file(lasso).curves[0].closed
    out = tmp_path / "lasso.nii.gz"
    assert segment(image_path, tiny_checkpoint, out, "--markups", str(lasso)) == 0
    box, mask = get_expected_lasso(LASSO_XY, (62, 128))
    expected = get_cli_predictor(image_path, tiny_checkpoint).predict_mask(axis, 60, Prompts(box=box, mask=mask))
    written = read_mask(out)
    assert expected.any()
    np.testing.assert_array_equal(np.take(written, 60, axis), expected)
    assert written.sum() == expected.sum()  # nothing on other slices


def test_segment_with_scribble_files_gives_the_points_prediction(image_path, tiny_checkpoint, matrix, axis, tmp_path):
    """A scribble and a negative one (named so), 22 px long: three points each, 11 px apart (spacing 10 px),
    against the same points as --point / --neg-point."""
    stroke = pixel_ras(60, [(44.1, 30.2), (66.1, 30.2)], axis, matrix)
    background = pixel_ras(60, [(90.2, 20.1), (90.2, 42.1)], axis, matrix)
    plus = write_curve(tmp_path / "scribble.mrk.json", stroke, closed=False)
    minus = write_curve(tmp_path / "background-negative.mrk.json", background, closed=False, system="RAS")
    assert segment(image_path, tiny_checkpoint, tmp_path / "a.nii.gz", "--markups", str(plus), "--markups",
                   str(minus)) == 0
    points = [["--point", f"{x},{60},{y}"] for x, y in [(44, 30), (55, 30), (66, 30)]]
    negatives = [["--neg-point", f"{x},{60},{y}"] for x, y in [(90, 20), (90, 31), (90, 42)]]
    assert axis == 1  # the fixture's axial slices are along J: --ijk i,j,k is x, slice, y
    assert segment(image_path, tiny_checkpoint, tmp_path / "b.nii.gz", "--ijk",
                   *[part for option in points + negatives for part in option]) == 0
    a, b = read_mask(tmp_path / "a.nii.gz"), read_mask(tmp_path / "b.nii.gz")
    assert b.any()
    np.testing.assert_array_equal(a, b)


def test_curve_files_that_are_no_prompt_are_one_line_errors(image_path, tiny_checkpoint, matrix, axis, tmp_path,
                                                            capsys):
    vertices = pixel_ras(60, LASSO_XY, axis, matrix)
    files = tmp_path / "files"
    files.mkdir()
    for path, message in ((write_curve(files / "lasso-negative.mrk.json", vertices, closed=True),
                           "a closed curve (lasso) is a positive prompt"),
                          (write_curve(files / "two.mrk.json", vertices[:2], closed=True),
                           "has 2 defined control points")):
        with pytest.raises(DataError, match=re.escape(message)):
            read_markups_file(path)
        out = tmp_path / "out"
        out.mkdir(exist_ok=True)
        assert segment(image_path, tiny_checkpoint, out / "m.nii.gz", "--markups", str(path)) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert list(out.iterdir()) == []
