"""Markups as the session's prompt model, with a real tiny SAM on a real T1 under a rotated, anisotropic grid.

The effect reads its point lists and ROIs in world RAS and hands all of them to `set_markups` whenever
one changes; these tests drive the session the same way and compare with the predictor called directly.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers_session import SegmentRecord, get_rotated_ijk_to_ras, get_test_volume, get_view_normal, get_voxel_ras

from medicosam.geometry import get_roi_slice_boxes, ijk_to_ras
from medicosam.markups import MarkupsPoint, MarkupsROI
from medicosam.predictor import VolumePredictor
from medicosam.prompts import Prompts
from medicosam.session import SegmentationSession

MATRIX = get_rotated_ijk_to_ras()
NORMAL = get_view_normal(MATRIX, 0)


@pytest.fixture
def volume(icbm152):
    return get_test_volume(icbm152)


@pytest.fixture
def session(tiny_sam, volume):
    return SegmentationSession(VolumePredictor(tiny_sam, volume, model_id="tiny"), MATRIX)


@pytest.fixture
def reference(tiny_sam, volume):
    return VolumePredictor(tiny_sam, volume, model_id="tiny")


def point(index_kji, positive=True):
    return MarkupsPoint(tuple(get_voxel_ras(index_kji, MATRIX, (0.2, -0.3, 0.4))), positive)


def roi_around(center_kji, size_mm, tilt=None):
    """An ROI whose axes are the volume's voxel axes (rotated by `tilt`), centred on a voxel."""
    axes = MATRIX[:3, :3] / np.linalg.norm(MATRIX[:3, :3], axis=0)
    return MarkupsROI(tuple(ijk_to_ras(np.asarray(center_kji, float)[::-1], MATRIX)), tuple(size_mm),
                      tuple(map(tuple, axes if tilt is None else axes @ tilt)))


def test_markups_points_predict_like_the_predictor_with_the_same_voxels(session, reference):
    changed = session.set_markups([point((18, 40, 35)), point((18, 30, 50), positive=False)], [], NORMAL)
    assert changed == [(0, 18)] and session.current == (0, 18)
    preview = session.update_preview()
    expected = reference.predict_mask(0, 18, Prompts(points=[[35, 40], [50, 30]], labels=[1, 0]))
    np.testing.assert_array_equal(preview.mask, expected)


def test_moving_a_control_point_changes_the_prompt_of_its_slice_only(session):
    points = [point((10, 40, 35)), point((18, 40, 35)), point((25, 40, 35))]
    assert session.set_markups(points, [], NORMAL) == [(0, 10), (0, 18), (0, 25)]
    session.update_preview()
    before = {k: session.get_prompts((0, k)).points.tolist() for k in (10, 25)}
    moved = [points[0], point((18, 44, 30)), points[2]]
    assert session.set_markups(moved, [], NORMAL) == [(0, 18)]
    assert session.get_prompts((0, 18)).points.tolist() == [[30, 44]]
    assert {k: session.get_prompts((0, k)).points.tolist() for k in (10, 25)} == before
    assert session.preview is None  # the moved slice's preview is stale; the others had none
    assert session.set_markups(moved[:2], [], NORMAL) == [(0, 25)]  # deleting a point


def test_adding_a_point_keeps_the_previous_prediction_but_moving_one_drops_it(session):
    first = point((18, 40, 35))
    session.set_markups([first], [], NORMAL)
    session.update_preview()
    session.set_markups([first, point((18, 30, 50), positive=False)], [], NORMAL)
    assert session.get_prompts().logits is not None  # a correction refines the mask
    session.update_preview()
    session.set_markups([point((18, 41, 36))], [], NORMAL)
    assert session.get_prompts().logits is None


def test_roi_gives_its_section_box_on_the_prompted_slice(session, reference):
    roi = roi_around((18, 40, 35), (20.0, 24.0, 12.0))
    session.set_markups([point((18, 40, 35))], [roi], NORMAL)
    prompts = session.get_prompts()
    expected = get_roi_slice_boxes(roi.get_corners_ras(), MATRIX, session.shape, 0)[18]
    assert prompts.box.tolist() == list(expected) and prompts.points.tolist() == [[35, 40]]
    np.testing.assert_array_equal(session.update_preview().mask, reference.predict_mask(0, 18, prompts))


def test_segment_in_roi_writes_exactly_the_roi_slices_as_one_request(session, reference):
    tilt = np.array([[np.cos(0.35), -np.sin(0.35), 0], [np.sin(0.35), np.cos(0.35), 0], [0, 0, 1]])  # 20 deg
    roi = roi_around((18, 40, 35), (20.0, 24.0, 14.0), tilt)
    boxes = get_roi_slice_boxes(roi.get_corners_ras(), MATRIX, session.shape, 0)
    record = SegmentRecord(session.shape)
    calls = []
    request = session.segment_in_roi(roi, [point((18, 40, 35))], NORMAL, progress=lambda d, t: calls.append((d, t)))
    record.write(request)
    assert len(record.requests) == 1 and request.slices == sorted(boxes)
    assert calls[-1] == (len(boxes), len(boxes))
    k = request.slices[0]
    np.testing.assert_array_equal(request.masks[k], reference.predict_mask(0, k, Prompts(box=boxes[k])))
    np.testing.assert_array_equal(request.masks[18], reference.predict_mask(
        0, 18, Prompts(points=[[35, 40]], labels=[1], box=boxes[18])))
    outside = [i for i in range(session.shape[0]) if i not in boxes]
    assert not record.segment[outside].any()
    assert session.get_accepted_slices(0) == sorted(boxes)
    record.undo()
    assert not record.segment.any()


def test_segment_in_roi_cancelled_writes_nothing(session):
    roi = roi_around((18, 40, 35), (20.0, 24.0, 14.0))
    assert session.segment_in_roi(roi, [], NORMAL, should_cancel=lambda: True) is None
    assert session.get_accepted_slices(0) == []
