"""Slicer markups (point lists, ROIs) as prompts: files as Slicer writes them, rotated and anisotropic grids."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_session import get_rotated_ijk_to_ras, get_rotation, get_voxel_ras
from slicer_markups import write_point_list, write_roi

from medicosam.geometry import PointOutsideVolumeError, get_roi_slice_boxes, ijk_to_ras
from medicosam.markups import (
    DataError,
    Markups,
    MarkupsPoint,
    MarkupsROI,
    get_markup_prompts,
    get_roi_slice_range,
    read_markups_file,
)

SHAPE = (24, 40, 36)  # K, J, I


FLIPPED = np.diag([-0.9, 1.4, -3.0, 1.0])  # i and k run against R and S (a flipped, anisotropic grid)


@pytest.mark.parametrize("system, matrix", [("LPS", get_rotated_ijk_to_ras()), ("RAS", get_rotated_ijk_to_ras()),
                                            ("LPS", FLIPPED)])
def test_points_land_on_their_voxels_of_rotated_flipped_anisotropic_grids(tmp_path, system, matrix):
    voxels = [(5, 10, 12), (5, 30, 20), (17, 3, 33)]
    world = [get_voxel_ras(v, matrix, offset_ijk=(0.3, -0.4, 0.2)) for v in voxels]
    path = write_point_list(tmp_path / "points.mrk.json", world, system, labels=["F-1", "-F-2", "F-3"])
    markups = read_markups_file(path)
    points = markups.points
    assert markups.rois == () and [p.positive for p in points] == [True, False, True]
    np.testing.assert_allclose([p.position_ras for p in points], world, atol=1e-9)
    for axis in range(3):
        prompts = get_markup_prompts(Markups(points), matrix, SHAPE, axis)
        for (k, j, i), positive in zip(voxels, (1, 0, 1)):
            index = (k, j, i)[axis]
            xy = [(k, j, i)[a] for a in (0, 1, 2) if a != axis][::-1]
            found = [tuple(p) for p, lab in zip(prompts[index].points, prompts[index].labels) if lab == positive]
            assert tuple(map(float, xy)) in found


def test_negative_rules_list_name_description_and_undefined_points(tmp_path):
    matrix = get_rotated_ijk_to_ras()
    world = [get_voxel_ras(v, matrix) for v in [(3, 4, 5), (6, 7, 8), (9, 10, 11)]]
    negative = write_point_list(tmp_path / "Liver-negative.mrk.json", world)
    assert [p.positive for p in read_markups_file(negative).points] == [False] * 3
    mixed = write_point_list(tmp_path / "mixed.mrk.json", world, descriptions=["", "- background", "+"],
                             statuses=["defined", "defined", "preview"])
    assert [p.positive for p in read_markups_file(mixed).points] == [True, False]


def test_roi_written_in_lps_and_ras_reads_the_same(tmp_path):
    axes = get_rotation((0.0, 0.0, 20.0))
    a = read_markups_file(write_roi(tmp_path / "a.mrk.json", (10.0, -20.0, 5.0), (30, 20, 12), axes, "LPS")).rois
    b = read_markups_file(write_roi(tmp_path / "b.mrk.json", (10.0, -20.0, 5.0), (30, 20, 12), axes, "RAS")).rois
    np.testing.assert_allclose(a[0].center_ras, (10.0, -20.0, 5.0))
    np.testing.assert_allclose(a[0].axes_ras, axes, atol=1e-12)
    np.testing.assert_allclose(a[0].get_corners_ras(), b[0].get_corners_ras(), atol=1e-9)


def _voxels_inside(roi: MarkupsROI, matrix, shape):
    """(k, j, i) of every voxel whose centre lies inside the ROI: an independent reference."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    kji = np.stack([k.ravel(), j.ravel(), i.ravel()], 1)
    local = (ijk_to_ras(kji[:, ::-1].astype(float), matrix) - roi.center_ras) @ np.asarray(roi.axes_ras)
    inside = np.all(np.abs(local) <= np.asarray(roi.size) / 2, axis=1)
    return kji[inside]


def test_roi_rotated_20_degrees_gives_the_box_around_its_section_on_each_slice():
    matrix = np.diag([0.8, 0.8, 2.5, 1.0])  # anisotropic, axial slices along K
    centre = ijk_to_ras(np.array([18.0, 20.0, 12.0]), matrix)
    roi = MarkupsROI(tuple(centre), (14.0, 9.0, 20.0), tuple(map(tuple, get_rotation((0.0, 0.0, 20.0)))))
    boxes = get_roi_slice_boxes(roi.get_corners_ras(), matrix, SHAPE, axis=0)
    inside = _voxels_inside(roi, matrix, SHAPE)
    assert sorted(boxes) == list(range(8, 17))  # 20 mm / 2.5 mm around k = 12: slices 8..16
    assert set(inside[:, 0]) <= set(boxes)
    for k, (x0, y0, x1, y1) in boxes.items():
        on_slice = inside[inside[:, 0] == k]
        if len(on_slice) == 0:
            continue
        assert x0 <= on_slice[:, 2].min() and on_slice[:, 2].max() < x1
        assert y0 <= on_slice[:, 1].min() and on_slice[:, 1].max() < y1
        assert x0 >= on_slice[:, 2].min() - 1 and x1 <= on_slice[:, 2].max() + 2  # tight, not the 3D hull
        assert y0 >= on_slice[:, 1].min() - 1 and y1 <= on_slice[:, 1].max() + 2
    # A rotation about the slice normal gives a wider box than the unrotated ROI.
    flat = get_roi_slice_boxes(MarkupsROI(tuple(centre), roi.size).get_corners_ras(), matrix, SHAPE, 0)
    assert boxes[12][2] - boxes[12][0] > flat[12][2] - flat[12][0]


def test_roi_tilted_out_of_plane_changes_its_box_from_slice_to_slice():
    matrix = get_rotated_ijk_to_ras(spacing=(1.0, 1.2, 2.0), angles_deg=(0.0, 0.0, 0.0), origin=(0, 0, 0))
    centre = ijk_to_ras(np.array([18.0, 20.0, 12.0]), matrix)
    roi = MarkupsROI(tuple(centre), (16.0, 16.0, 16.0), tuple(map(tuple, get_rotation((0.0, 30.0, 0.0)))))
    boxes = get_roi_slice_boxes(roi.get_corners_ras(), matrix, SHAPE, axis=0)
    widths = [boxes[k][2] - boxes[k][0] for k in sorted(boxes)]
    assert widths[0] < max(widths) and widths[-1] < max(widths)
    inside = _voxels_inside(roi, matrix, SHAPE)
    for k, (x0, _, x1, _) in boxes.items():
        on_slice = inside[inside[:, 0] == k]
        if len(on_slice):
            assert x0 <= on_slice[:, 2].min() and on_slice[:, 2].max() < x1


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_roi_boxes_on_a_flipped_grid_match_the_voxel_reference(axis):
    centre = ijk_to_ras(np.array([18.0, 20.0, 12.0]), FLIPPED)
    roi = MarkupsROI(tuple(centre), (11.0, 13.0, 17.0), tuple(map(tuple, get_rotation((10.0, -15.0, 20.0)))))
    boxes = get_roi_slice_boxes(roi.get_corners_ras(), FLIPPED, SHAPE, axis)
    inside = _voxels_inside(roi, FLIPPED, SHAPE)
    row_axis, col_axis = [a for a in (0, 1, 2) if a != axis]
    assert set(inside[:, axis]) <= set(boxes)
    for index, (x0, y0, x1, y1) in boxes.items():
        on_slice = inside[inside[:, axis] == index]
        if len(on_slice):
            assert x0 <= on_slice[:, col_axis].min() and on_slice[:, col_axis].max() < x1
            assert y0 <= on_slice[:, row_axis].min() and on_slice[:, row_axis].max() < y1


def test_thin_roi_covers_the_one_slice_it_lies_in_and_clips_to_the_image():
    matrix = np.diag([1.0, 1.0, 3.0, 1.0])
    roi = MarkupsROI((-5.0, 10.0, 3.0 * 7), (30.0, 12.0, 0.0))  # drawn on slice k = 7, overhanging i < 0
    assert get_roi_slice_boxes(roi.get_corners_ras(), matrix, SHAPE, 0) == {7: (0, 4, 11, 17)}
    assert get_roi_slice_range([roi], matrix, SHAPE, 0) == (7, 7)


def test_roi_prompts_centre_slice_point_slices_or_every_slice():
    matrix = np.eye(4)
    roi = MarkupsROI((18.0, 20.0, 12.0), (10.0, 8.0, 6.0))
    point = MarkupsPoint((18.0, 20.0, 10.0), True)
    centre_only = get_markup_prompts(Markups(rois=[roi]), matrix, SHAPE, 0)
    assert list(centre_only) == [12] and centre_only[12].box.tolist() == [13, 16, 24, 25]
    with_point = get_markup_prompts(Markups([point], [roi]), matrix, SHAPE, 0)
    assert sorted(with_point) == [10, 12] and with_point[10].box is not None and len(with_point[10].points) == 1
    every = get_markup_prompts(Markups([point], [roi]), matrix, SHAPE, 0, every_roi_slice=True)
    assert sorted(every) == list(range(9, 16)) and len(every[10].points) == 1 and len(every[11].points) == 0


def test_roi_outside_the_volume_and_point_outside_are_clear_errors():
    matrix = np.eye(4)
    with pytest.raises(DataError, match="does not overlap the volume"):
        get_markup_prompts(Markups(rois=[MarkupsROI((500.0, 0.0, 0.0), (5.0, 5.0, 5.0))]), matrix, SHAPE, 0)
    with pytest.raises(PointOutsideVolumeError):
        get_markup_prompts(Markups([MarkupsPoint((-50.0, 0.0, 0.0), True)]), matrix, SHAPE, 0)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("@schema"), "@schema"),
    (lambda d: d["markups"][0].update(type="Line"), "type 'Line'"),
    (lambda d: d["markups"][0].update(coordinateSystem="IJK"), "coordinateSystem"),
    (lambda d: d["markups"][0]["controlPoints"][0].update(position=[1, "x", 2]), r"controlPoints\[0\].position"),
    (lambda d: [p.update(positionStatus="undefined", position="") for p in d["markups"][0]["controlPoints"]],
     "no defined control point"),
])
def test_malformed_files_name_the_file_and_field(tmp_path, mutate, message):
    path = write_point_list(tmp_path / "p.mrk.json", [(1.0, 2.0, 3.0), (4.0, 5.0, 6.0)])
    document = json.loads(path.read_text())
    mutate(document)
    path.write_text(json.dumps(document))
    with pytest.raises(DataError, match=message) as error:
        read_markups_file(path)
    assert str(path) in str(error.value)


def test_not_json_and_bad_roi_fields(tmp_path):
    garbage = tmp_path / "g.mrk.json"
    garbage.write_bytes(b"\x89PNG not json")
    with pytest.raises(DataError, match="cannot read it"):
        read_markups_file(garbage)
    roi = write_roi(tmp_path / "r.mrk.json", (0, 0, 0), (4, 4, 4))
    document = json.loads(roi.read_text())
    document["markups"][0]["orientation"] = [2, 0, 0, 0, 1, 0, 0, 0, 1]
    roi.write_text(json.dumps(document))
    with pytest.raises(DataError, match="orientation is not a rotation"):
        read_markups_file(roi)


def test_an_roi_empty_across_the_slices_is_refused():
    # A flat ROI covers the slice it lies in (as a --box does); seen edge-on, or as a point, it is an
    # empty box: refused as an empty --box is (test_segment_markups: as a prompt and as --in-roi bounds).
    matrix = np.eye(4)  # i = R, j = A, k = S
    flat = MarkupsROI((18.0, 20.0, 12.0), (10.0, 8.0, 0.0))  # no extent along S = k: an axial rectangle
    assert get_roi_slice_range([flat], matrix, SHAPE, 0) == (12, 12)
    for roi, axis in ((flat, 1), (flat, 2), (MarkupsROI((18.0, 20.0, 12.0), (0.0, 0.0, 0.0)), 0)):
        with pytest.raises(DataError, match=f"is empty across the slices along array axis {axis}"):
            get_roi_slice_range([roi], matrix, SHAPE, axis)


def test_too_many_points_and_deep_nesting_are_one_clear_error(tmp_path):
    from medicosam.markups import MAX_CONTROL_POINTS

    positions = [(float(n % 30), float(n // 30 % 30), 5.0) for n in range(MAX_CONTROL_POINTS + 1)]
    many = write_point_list(tmp_path / "many.mrk.json", positions)
    with pytest.raises(DataError, match=f"{MAX_CONTROL_POINTS + 1} control points, more than the "
                                        f"{MAX_CONTROL_POINTS}") as error:
        read_markups_file(many)
    assert str(many) in str(error.value)
    read_markups_file(write_point_list(tmp_path / "most.mrk.json", positions[1:]))  # the most a file may hold
    nested = tmp_path / "nested.mrk.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match="cannot read it as a Slicer markups file"):
        read_markups_file(nested)
