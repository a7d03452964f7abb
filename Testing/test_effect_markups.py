"""What the effect reads from and writes to Slicer's markups nodes, without Slicer: an ROI node's world
geometry from its object-to-world matrix, the ROI a box drag makes, the sign of a control point, what
"Clear prompts" deletes and when an ROI bounds propagation. Grids
are rotated and anisotropic (`helpers_session`)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_session import get_rotated_ijk_to_ras, get_rotation, get_voxel_ras

from medicosam.effect.session import SegmentationSession
from medicosam.errors import DataError, InputError
from medicosam.markups import (
    Markups,
    MarkupsPoint,
    MarkupsROI,
    get_markup_prompts,
    get_markups_on_slice,
    get_propagation_range,
    get_roi_from_drag,
    get_roi_from_matrix,
    get_roi_slice_range,
    is_negative_point,
)

MATRIX = get_rotated_ijk_to_ras()
SHAPE = (36, 80, 70)


def get_view_axes(axis: int) -> np.ndarray:
    """SliceToRAS rotation of a view rotated to the volume plane: in-plane the volume's column and row
    directions, the normal along the slice axis (the x axis flipped, as in Slicer's Red view)."""
    directions = MATRIX[:3, :3] / np.linalg.norm(MATRIX[:3, :3], axis=0)  # columns i, j, k
    row_axis, col_axis = (a for a in (0, 1, 2) if a != axis)
    return np.column_stack([-directions[:, 2 - col_axis], directions[:, 2 - row_axis], directions[:, 2 - axis]])


def test_roi_node_geometry_under_a_rotating_scaling_transform():
    roi = MarkupsROI((10.0, -5.0, 30.0), (40.0, 20.0, 8.0), tuple(map(tuple, get_rotation((20.0, 0.0, -10.0)))))
    transform = np.eye(4)
    transform[:3, :3] = get_rotation((0.0, 30.0, 0.0)) * 1.5
    transform[:3, 3] = (1.0, 2.0, 3.0)
    object_to_world = transform @ roi.get_matrix()
    world = get_roi_from_matrix(object_to_world, roi.size)

    object_corners = np.array([[a, b, c, 1.0] for a in (-0.5, 0.5) for b in (-0.5, 0.5) for c in (-0.5, 0.5)])
    expected = (object_corners * [*roi.size, 1.0]) @ object_to_world.T
    np.testing.assert_allclose(world.get_corners_ras(), expected[:, :3], atol=1e-9)
    again = get_roi_from_matrix(roi.get_matrix(), roi.size)
    np.testing.assert_allclose(again.get_corners_ras(), roi.get_corners_ras(), atol=1e-9)


def test_roi_node_being_placed_or_sheared():
    assert get_roi_from_matrix(np.eye(4), (10.0, 0.0, 5.0)) is None
    stretched = np.diag([2.0, 1.0, 1.0, 1.0]) @ MarkupsROI((0, 0, 0), (1, 1, 1), get_rotation((0, 0, 30))).get_matrix()
    with pytest.raises(DataError, match="shearing transform"):  # a rotated box stretched: no box
        get_roi_from_matrix(stretched, (1.0, 1.0, 1.0))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_box_drag_roi_prompts_the_box_of_the_drag_on_its_slice_only(axis):
    row_axis, col_axis = (a for a in (0, 1, 2) if a != axis)
    corners = np.zeros((2, 3), int)
    corners[:, axis], corners[:, row_axis], corners[:, col_axis] = 18, (5, 30), (10, 40)
    a = get_voxel_ras(corners[0], MATRIX, (0.2, -0.3, 0.1))
    b = get_voxel_ras(corners[1], MATRIX, (-0.1, 0.3, -0.2))
    roi = get_roi_from_drag(a, b, get_view_axes(axis), MATRIX, SHAPE)

    index, box = 18, (10, 5, 41, 31)  # the corners' voxels (rows 5 and 30, columns 10 and 40) and all between
    prompts = get_markup_prompts(Markups(rois=[roi]), MATRIX, SHAPE, axis, every_roi_slice=True)
    assert list(prompts) == [index] and tuple(prompts[index].box) == box
    assert np.isclose(np.linalg.det(np.asarray(roi.axes_ras)), 1.0)
    assert get_roi_slice_range([roi], MATRIX, SHAPE, axis) == (index, index)
    assert get_propagation_range([roi], MATRIX, SHAPE, axis) is None


def test_box_drag_in_an_oblique_view_or_along_a_line_is_refused():
    with pytest.raises(InputError):
        get_roi_from_drag((0, 0, 0), (10, 10, 0), get_rotation((0.0, 0.0, 0.0)), MATRIX, SHAPE)
    axes = get_view_axes(0)
    start = get_voxel_ras((18, 40, 35), MATRIX)
    with pytest.raises(InputError):
        get_roi_from_drag(start, start + 20 * axes[:, 0], axes, MATRIX, SHAPE)


def test_an_roi_over_several_slices_bounds_propagation_to_them():
    centre = get_voxel_ras((18, 40, 35), MATRIX)
    axes = MATRIX[:3, :3] / np.linalg.norm(MATRIX[:3, :3], axis=0)
    roi = MarkupsROI(tuple(centre), (20.0, 20.0, 4.8 * 2.9), tuple(map(tuple, axes)))  # 4.8 slices
    assert get_propagation_range([roi], MATRIX, SHAPE, 0) == (16, 20)
    assert get_propagation_range([], MATRIX, SHAPE, 0) is None


@pytest.mark.parametrize("list_name, label, description, negative", [
    ("MedicoSAM positive", "P-1", "", False),
    ("MedicoSAM negative", "P-1", "", True),
    ("Background NEGATIVE points", None, None, True),
    ("F", "-leak", "", True),
    ("F", "F-3", " - outside", True),
    (None, None, None, False),
])
def test_sign_of_a_control_point(list_name, label, description, negative):
    assert is_negative_point(list_name, label, description) is negative


def test_clear_deletes_the_points_of_the_slice_and_an_roi_on_it_alone():
    points = [MarkupsPoint(tuple(get_voxel_ras(kji, MATRIX, (0.3, -0.2, 0.1))), True)
              for kji in [(18, 40, 35), (19, 40, 35), (18, 10, 60), (-5, 40, 35)]]  # the last is outside
    axes = get_view_axes(0)
    drawn = get_roi_from_drag(get_voxel_ras((18, 30, 20), MATRIX), get_voxel_ras((18, 50, 45), MATRIX), axes,
                              MATRIX, SHAPE)
    other_slice = get_roi_from_drag(get_voxel_ras((19, 30, 20), MATRIX), get_voxel_ras((19, 50, 45), MATRIX),
                                    axes, MATRIX, SHAPE)
    thick = MarkupsROI(drawn.center_ras, (drawn.size[0], drawn.size[1], 10.0), drawn.axes_ras)
    assert get_markups_on_slice(Markups(points, [drawn, other_slice, thick]), MATRIX, SHAPE, 0, 18) == ([0, 2], [0], [])


def test_a_slice_whose_markups_were_all_deleted_has_no_prompts(shape_only_predictor):
    session = SegmentationSession(shape_only_predictor, MATRIX)
    normal = MATRIX[:3, 2] / np.linalg.norm(MATRIX[:3, 2])
    assert not session.has_prompts()
    session.set_markups(Markups([MarkupsPoint(tuple(get_voxel_ras((18, 40, 35), MATRIX)), True)]), normal)
    assert session.has_prompts() and session.has_prompts((0, 18)) and not session.has_prompts((0, 17))
    assert session.set_markups(Markups(), normal) == [(0, 18)] and not session.has_prompts()


@pytest.fixture
def shape_only_predictor():
    """All the session reads of a predictor before predicting: the volume's shape."""
    class Predictor:
        volume = np.zeros(SHAPE, np.float32)
    return Predictor()

