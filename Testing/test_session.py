"""The Slicer effect's state machine, driven like the effect drives it, with a real tiny SAM on a real T1.

With random weights SAM's masks are arbitrary, so every expectation comes from the predictor called
directly with the voxel prompts the test expects: equal masks prove the RAS -> voxel -> slice mapping
and the state machine; the write requests and undo points are checked as the effect would use them.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers_session import (
    SegmentRecord,
    get_rotated_ijk_to_ras,
    get_rotation,
    get_test_volume,
    get_view_normal,
    get_voxel_ras,
)

from medicosam.effect.extent import get_array_on_extent, get_extent_shape, get_world_ijk_to_ras
from medicosam.effect.session import SegmentationSession, WriteRequest
from medicosam.errors import InputError
from medicosam.geometry import (
    PointOutsideVolumeError,
    get_roi_slice_boxes,
    ijk_to_ras,
    ras_to_array_index,
)
from medicosam.markups import Markups, MarkupsPoint, MarkupsROI, get_roi_from_corners
from medicosam.predictor import VolumePredictor
from medicosam.prompts import Prompts
from medicosam.propagation import PropagationConfig

MATRIX = get_rotated_ijk_to_ras()
SEED = (18, 40, 35)  # (k, j, i) of the first click
CONFIG = PropagationConfig(iou_threshold=0.0, max_slices=3)


@pytest.fixture
def volume(icbm152):
    return get_test_volume(icbm152)


@pytest.fixture
def session(tiny_sam, volume):
    return SegmentationSession(VolumePredictor(tiny_sam, volume, model_id="tiny"), MATRIX)


@pytest.fixture
def reference(tiny_sam, volume):
    """A separate predictor on the same model and volume: what the effect's result must equal."""
    return VolumePredictor(tiny_sam, volume, model_id="tiny")


def get_plane_xy(index_kji, axis):
    """(x, y) = (column, row) of a voxel on its slice along `axis` (docs/architecture.md)."""
    row_axis, col_axis = [a for a in (0, 1, 2) if a != axis]
    return [index_kji[col_axis], index_kji[row_axis]]


def move_in_plane(index_kji, axis, deltas=(8, -10)):
    """A voxel on the same slice as `index_kji`, shifted in the two in-plane axes."""
    moved = list(index_kji)
    for a, delta in zip([a for a in (0, 1, 2) if a != axis], deltas):
        moved[a] += delta
    return tuple(moved)


def click(session, index_kji, positive=True, axis=0, offset_ijk=(0.3, -0.4, 0.45)):
    return session.add_point(get_voxel_ras(index_kji, MATRIX, offset_ijk), positive, get_view_normal(MATRIX, axis))


@pytest.mark.parametrize("axis, flip", [(0, False), (1, True), (2, False)])
def test_ras_clicks_land_on_their_voxels_in_a_rotated_anisotropic_grid(session, reference, axis, flip):
    negative = move_in_plane(SEED, axis)
    normal = get_view_normal(MATRIX, axis, flip)
    for voxel, positive in ((SEED, True), (negative, False)):
        key = session.add_point(get_voxel_ras(voxel, MATRIX, (0.3, -0.4, 0.45)), positive, normal)
        assert key == (axis, SEED[axis])
    prompts = session.get_prompts()
    np.testing.assert_array_equal(prompts.points, [get_plane_xy(SEED, axis), get_plane_xy(negative, axis)])
    np.testing.assert_array_equal(prompts.labels, [1, 0])
    preview = session.update_preview()
    expected = reference.predict(axis, SEED[axis], Prompts(points=prompts.points, labels=[1, 0]))
    assert preview.mask.shape == np.take(reference.volume, SEED[axis], axis).shape
    np.testing.assert_array_equal(preview.mask, expected.masks[0])


def test_box_from_two_world_corners(session, reference):
    axis, corner_a = 2, SEED
    corner_b = move_in_plane(SEED, axis, (-9, 14))  # (k, j) decrease / increase: corners in any order
    roi = get_roi_from_corners(get_voxel_ras(corner_a, MATRIX), get_voxel_ras(corner_b, MATRIX), MATRIX, session.shape,
                               axis)
    session.set_markups(Markups(rois=[roi]), get_view_normal(MATRIX, axis))
    (xa, ya), (xb, yb) = get_plane_xy(corner_a, axis), get_plane_xy(corner_b, axis)
    box = [min(xa, xb), min(ya, yb), max(xa, xb) + 1, max(ya, yb) + 1]
    np.testing.assert_array_equal(session.get_prompts().box, box)
    expected = reference.predict(axis, SEED[axis], Prompts(box=box)).masks[0]
    np.testing.assert_array_equal(session.update_preview().mask, expected)


def test_oblique_view_and_outside_click_are_refused_without_changing_state(session):
    tilted = get_rotation((0.0, 5.0, 0.0)) @ get_view_normal(MATRIX, 0)
    with pytest.raises(InputError, match="oblique"):
        session.add_point(get_voxel_ras(SEED, MATRIX), True, tilted)
    with pytest.raises(PointOutsideVolumeError, match="outside the volume"):
        session.add_point(get_voxel_ras((18, 40, 500), MATRIX), True, get_view_normal(MATRIX, 0))
    assert session.current is None
    with pytest.raises(InputError, match="click a point"):
        session.apply()


def test_world_matrix_includes_extent_start_and_parent_transform(tiny_sam, volume, reference):
    """A click in world RAS through a parent transform lands on the array voxel of an image whose
    extent does not start at 0, as the effect's images may."""
    extent = (3, 3 + volume.shape[2] - 1, -5, -5 + volume.shape[1] - 1, 7, 7 + volume.shape[0] - 1)
    parent = np.eye(4)
    parent[:3, :3] = get_rotation((-20.0, 10.0, 70.0))
    parent[:3, 3] = (12.0, -30.0, 4.0)
    world = get_world_ijk_to_ras(MATRIX, extent, parent)
    voxel_ijk = np.array([SEED[2] + 3, SEED[1] - 5, SEED[0] + 7, 1.0])  # the image's own IJK
    point = (parent @ MATRIX @ voxel_ijk)[:3]
    assert ras_to_array_index(point, world, volume.shape) == SEED
    session = SegmentationSession(VolumePredictor(tiny_sam, volume), world)
    assert session.add_point(point, True, parent[:3, :3] @ get_view_normal(MATRIX, 1)) == (1, SEED[1])


def test_preview_apply_propagate_correct_repropagate(session, reference, volume):
    record = SegmentRecord(volume.shape)
    axis, index = 0, SEED[0]
    click(session, SEED)
    preview = session.update_preview()
    seed_mask = reference.predict(axis, index, Prompts(points=[get_plane_xy(SEED, axis)], labels=[1])).masks[0]
    np.testing.assert_array_equal(preview.mask, seed_mask)

    record.write(session.apply())
    assert (record.requests[-1].action, record.requests[-1].slices) == ("apply", [index])
    np.testing.assert_array_equal(record.segment[index], seed_mask)
    assert record.segment.sum() == seed_mask.sum()

    record.write(session.propagate(CONFIG, record.segment))
    expected = reference.propagate(axis, {index: seed_mask}, CONFIG)
    request = record.requests[-1]
    assert request.slices == [i for i in sorted(expected.masks) if i != index] == [15, 16, 17, 19, 20, 21]
    for i in request.slices:
        np.testing.assert_array_equal(record.segment[i], expected.masks[i])
    assert not record.segment[:15].any() and not record.segment[22:].any()  # only reached slices written
    assert request.describe() == ("Wrote 6 slices between 15 and 21. Stopped down: slice limit (max_slices) "
                                  "at slice 14; up: slice limit (max_slices) at slice 22.")

    # Correct a propagated slice with a negative click: refinement feeds SAM the mask written there.
    fix_voxel = move_in_plane((index + 2, SEED[1], SEED[2]), axis)
    assert click(session, fix_voxel, positive=False) == (axis, index + 2)
    fixed = reference.predict(axis, index + 2, Prompts(points=[get_plane_xy(fix_voxel, axis)], labels=[0],
                                                       mask=expected.masks[index + 2])).masks[0]
    np.testing.assert_array_equal(session.update_preview().mask, fixed)
    record.write(session.apply())
    assert record.requests[-1].slices == [index + 2]
    assert session.get_accepted_slices(axis) == [index, index + 2]

    record.write(session.propagate(CONFIG, record.segment))
    again = reference.propagate(axis, {index: seed_mask, index + 2: fixed}, CONFIG)
    request = record.requests[-1]
    assert request.slices == [i for i in sorted(again.masks) if i not in (index, index + 2)]
    assert index + 1 in request.slices and index + 5 in request.slices  # the gap and beyond the new seed
    for i in request.slices:
        np.testing.assert_array_equal(record.segment[i], again.masks[i])
    np.testing.assert_array_equal(record.segment[index + 2], fixed)
    assert len(record.undo_stack) == 4  # one undo point per apply / propagate, none for clicks and previews


def test_propagate_accepts_the_pending_preview_in_the_same_action(session, reference, volume):
    record = SegmentRecord(volume.shape)
    axis = 2
    click(session, SEED, axis=axis)
    record.write(session.propagate(CONFIG, record.segment))
    assert len(record.requests) == 1
    seed_mask = reference.predict(axis, SEED[axis], Prompts(points=[get_plane_xy(SEED, axis)], labels=[1])).masks[0]
    expected = reference.propagate(axis, {SEED[axis]: seed_mask}, CONFIG)
    assert record.requests[0].slices == sorted(expected.masks)  # the seed slice is written too
    for i, mask in expected.masks.items():
        np.testing.assert_array_equal(record.segment[:, :, i], mask)
    assert session.get_accepted_slices(axis) == [SEED[axis]]


def test_propagation_makes_what_it_wrote_the_refinement_input_of_its_slices(session, reference, volume):
    record = SegmentRecord(volume.shape)
    click(session, (21, SEED[1], SEED[2]))
    session.update_preview()  # looked at slice 21, then moved on without applying
    click(session, SEED)
    record.write(session.apply())
    record.write(session.propagate(CONFIG, record.segment))
    assert 21 in record.requests[-1].slices
    negative = move_in_plane((21, SEED[1], SEED[2]), 0)
    click(session, negative, positive=False)
    prompts = session.get_prompts()
    np.testing.assert_array_equal(prompts.points, [get_plane_xy((21, SEED[1], SEED[2]), 0), get_plane_xy(negative, 0)])
    assert prompts.logits is None  # the prediction made there before propagation is stale
    np.testing.assert_array_equal(prompts.mask, record.segment[21])  # refinement starts from what is shown
    expected = reference.predict(0, 21, Prompts(points=prompts.points, labels=[1, 0], mask=record.segment[21]))
    np.testing.assert_array_equal(session.update_preview().mask, expected.masks[0])


def test_undone_apply_is_no_longer_a_seed(session, reference, volume):
    record = SegmentRecord(volume.shape)
    for index in (10, 26):
        click(session, (index, SEED[1], SEED[2]))
        record.write(session.apply())
    record.undo()  # Ctrl+Z in the Segment Editor: slice 26 is empty again
    record.write(session.propagate(CONFIG, record.segment))
    expected = reference.propagate(0, {10: record.segment[10].copy()}, CONFIG)
    assert record.requests[-1].slices == [7, 8, 9, 11, 12, 13] == [i for i in sorted(expected.masks) if i != 10]
    assert session.get_accepted_slices(0) == [10]
    record.segment[:] = False  # everything erased with another effect: nothing left to propagate from
    with pytest.raises(InputError, match="nothing to propagate"):
        session.propagate(CONFIG, record.segment)


def test_cancelled_propagation_changes_nothing(session, reference, volume):
    record = SegmentRecord(volume.shape)
    click(session, SEED)
    reports = []
    cancelled = session.propagate(CONFIG, record.segment, lambda done, total: reports.append(done),
                                  lambda: len(reports) >= 2)
    assert cancelled is None and record.requests == [] and session.get_accepted_slices(0) == []
    record.write(session.apply())  # the preview is still pending: Apply writes it now
    record.write(session.propagate(CONFIG, record.segment))
    assert record.requests[-1].slices == [15, 16, 17, 19, 20, 21]


@pytest.mark.parametrize("refine", [True, False])
def test_refinement_feeds_the_previous_prediction(tiny_sam, volume, reference, refine):
    session = SegmentationSession(VolumePredictor(tiny_sam, volume), MATRIX, refine=refine)
    second = move_in_plane(SEED, 0)
    click(session, SEED)
    first = session.update_preview()
    click(session, second, positive=False)
    points = [get_plane_xy(SEED, 0), get_plane_xy(second, 0)]
    previous = reference.predict(0, SEED[0], Prompts(points=points[:1], labels=[1]))
    logits = previous.logits[0] if refine else None
    expected = reference.predict(0, SEED[0], Prompts(points=points, labels=[1, 0], logits=logits)).masks[0]
    np.testing.assert_array_equal(first.mask, previous.masks[0])
    np.testing.assert_array_equal(session.update_preview().mask, expected)


def test_prompts_belong_to_their_slice(session):
    other = (SEED[0] + 4, SEED[1], SEED[2])
    click(session, SEED)
    assert click(session, other) == (0, other[0]) and session.preview is None
    assert len(session.get_prompts().points) == 1
    click(session, move_in_plane(SEED, 0), positive=False)  # back on the first slice: its prompts are there
    np.testing.assert_array_equal(session.get_prompts().labels, [1, 0])
    session.clear_prompts()
    with pytest.raises(InputError, match="no prompt"):
        session.get_prompts()
    assert len(session.get_prompts((0, other[0])).points) == 1


def test_write_request_blocks_extents_and_segment_update():
    shape = (6, 5, 4)
    masks = {i: np.full((6, 5), i % 2 == 0) for i in (1, 2, 0)}
    masks[3] = np.eye(6, 5, dtype=bool)
    whole = np.ones((6, 5), bool)
    request = WriteRequest("propagate", 2, {i: masks[i] for i in (3, 0, 1)}, shape, covered={0: whole, 1: whole})
    blocks = request.get_blocks()
    assert [(b.start, b.stop) for b in blocks] == [(0, 2), (3, 4)]
    assert blocks[1].get_extent(shape, origin_ijk=(10, 20, 30)) == [13, 13, 20, 24, 30, 35]
    assert blocks[0].get_index() == (slice(None), slice(None), slice(0, 2))
    segment = np.ones(shape, bool)
    request.apply_to(segment)
    for i in (0, 1):
        np.testing.assert_array_equal(segment[:, :, i], masks[i])
    assert segment[:, :, 2].all()  # not listed: untouched
    assert segment[:, :, 3].all()  # covered by its mask alone: nothing to drop
    assert request.describe() == "Wrote 3 slices between 0 and 3."
    assert WriteRequest("propagate", 2, {}, shape).describe().startswith("Nothing was written")


def test_array_on_extent_clips_and_pads():
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)  # (K, J, I) with extent i 5..8, j 1..3, k 0..1
    out = get_array_on_extent(array, (5, 8, 1, 3, 0, 1), (6, 9, 0, 2, 1, 2))
    expected = np.zeros((2, 3, 4), array.dtype)
    expected[0, 1:3, 0:3] = array[1, 0:2, 1:4]
    np.testing.assert_array_equal(out, expected)
    assert get_array_on_extent(array, (5, 8, 1, 3, 0, 1), (5, 8, 1, 3, 0, 1)) is array
    assert get_extent_shape((5, 8, 1, 3, 0, 1)) == array.shape


def test_prefetch_neighbours_nearest_first_inside_the_volume(session):
    assert session.get_prefetch_slices() == []
    click(session, (0, SEED[1], SEED[2]))
    assert session.get_prefetch_slices() == [(0, 1), (0, 2)]
    click(session, SEED)
    assert session.get_prefetch_slices() == [(0, 19), (0, 17), (0, 20), (0, 16)]


# Markups as the prompt model: the effect hands every point list and ROI to `set_markups` on each change.

NORMAL = get_view_normal(MATRIX, 0)


def point(index_kji, positive=True):
    return MarkupsPoint(tuple(get_voxel_ras(index_kji, MATRIX, (0.2, -0.3, 0.4))), positive)


def roi_around(center_kji, size_mm, tilt=None):
    """An ROI whose axes are the volume's voxel axes (rotated by `tilt`), centred on a voxel."""
    axes = MATRIX[:3, :3] / np.linalg.norm(MATRIX[:3, :3], axis=0)
    return MarkupsROI(tuple(ijk_to_ras(np.asarray(center_kji, float)[::-1], MATRIX)), tuple(size_mm),
                      tuple(map(tuple, axes if tilt is None else axes @ tilt)))


def test_markups_points_predict_like_the_predictor_with_the_same_voxels(session, reference):
    changed = session.set_markups(Markups([point((18, 40, 35)), point((18, 30, 50), positive=False)]), NORMAL)
    assert changed == [(0, 18)] and session.current == (0, 18)
    preview = session.update_preview()
    expected = reference.predict_mask(0, 18, Prompts(points=[[35, 40], [50, 30]], labels=[1, 0]))
    np.testing.assert_array_equal(preview.mask, expected)


def test_moving_a_control_point_changes_the_prompt_of_its_slice_only(session):
    points = [point((10, 40, 35)), point((18, 40, 35)), point((25, 40, 35))]
    assert session.set_markups(Markups(points), NORMAL) == [(0, 10), (0, 18), (0, 25)]
    session.update_preview()
    before = {k: session.get_prompts((0, k)).points.tolist() for k in (10, 25)}
    moved = [points[0], point((18, 44, 30)), points[2]]
    assert session.set_markups(Markups(moved), NORMAL) == [(0, 18)]
    assert session.get_prompts((0, 18)).points.tolist() == [[30, 44]]
    assert {k: session.get_prompts((0, k)).points.tolist() for k in (10, 25)} == before
    assert session.preview is None  # the moved slice's preview is stale; the others had none
    assert session.set_markups(Markups(moved[:2]), NORMAL) == [(0, 25)]  # deleting a point


def test_adding_a_point_keeps_the_previous_prediction_but_moving_one_drops_it(session):
    first = point((18, 40, 35))
    session.set_markups(Markups([first]), NORMAL)
    session.update_preview()
    session.set_markups(Markups([first, point((18, 30, 50), positive=False)]), NORMAL)
    assert session.get_prompts().logits is not None  # a correction refines the mask
    session.update_preview()
    session.set_markups(Markups([point((18, 41, 36))]), NORMAL)
    assert session.get_prompts().logits is None


def test_roi_gives_its_section_box_on_the_prompted_slice(session, reference):
    roi = roi_around((18, 40, 35), (20.0, 24.0, 12.0))
    session.set_markups(Markups([point((18, 40, 35))], [roi]), NORMAL)
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
    request = session.segment_in_roi(roi, Markups([point((18, 40, 35))]), NORMAL,
                                     progress=lambda d, t: calls.append((d, t)))
    record.write(request)
    assert len(record.requests) == 1 and request.slices == sorted(boxes)
    assert calls[-1] == (len(boxes), len(boxes))
    k = request.slices[0]

    def in_box(mask, box):  # the ROI bounds the write
        inside = np.zeros_like(mask)
        inside[box[1]:box[3], box[0]:box[2]] = True
        return mask & inside

    np.testing.assert_array_equal(request.masks[k], in_box(reference.predict_mask(0, k, Prompts(box=boxes[k])),
                                                           boxes[k]))
    np.testing.assert_array_equal(request.masks[18], in_box(reference.predict_mask(
        0, 18, Prompts(points=[[35, 40]], labels=[1], box=boxes[18])), boxes[18]))
    outside = [i for i in range(session.shape[0]) if i not in boxes]
    assert not record.segment[outside].any()
    assert session.get_accepted_slices(0) == sorted(boxes)
    record.undo()
    assert not record.segment.any()


def test_segment_in_roi_cancelled_writes_nothing(session):
    roi = roi_around((18, 40, 35), (20.0, 24.0, 14.0))
    assert session.segment_in_roi(roi, None, NORMAL, should_cancel=lambda: True) is None
    assert session.get_accepted_slices(0) == []
