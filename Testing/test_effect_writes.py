"""What the effect writes: only inside the region a request covers, one undo point per change.

A "kidneys" segment holds the other kidney (a block of voxels away from the prompts): Segment in ROI,
Apply and Propagate write the object and leave that block as it was, and undo restores the segment
before each action. `SegmentRecord` writes as the effect does (`WriteRequest.changes`, then per block
`get_removed` and the masks), so these are the voxels Slicer would change.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers_session import SegmentRecord, get_rotated_ijk_to_ras, get_test_volume, get_view_normal, get_voxel_ras

from medicosam.effect.session import SegmentationSession, WriteBlock, WriteRequest, get_seeds
from medicosam.geometry import get_roi_slice_boxes, ijk_to_ras
from medicosam.markups import Markups, MarkupsPoint, MarkupsROI
from medicosam.predictor import VolumePredictor
from medicosam.propagation import PropagationConfig

MATRIX = get_rotated_ijk_to_ras()
NORMAL = get_view_normal(MATRIX, 0)
OTHER_KIDNEY = (slice(8, 30), slice(2, 14), slice(52, 68))  # (k, j, i) far from the prompts at j 40, i 35


def test_only_voxels_the_new_masks_drop_inside_the_covered_region_are_removed():
    """With the editable area "inside a single segment" Slicer gives erased voxels to the masking segment,
    so erasing beyond what the write covers would hand it voxels the segment keeps."""
    rng = np.random.default_rng(0)
    segment = rng.random((5, 6, 7)) > 0.5
    for axis in range(3):
        shape = [n for a, n in enumerate(segment.shape) if a != axis]
        masks = rng.random((2, *shape)) > 0.5
        covered = masks | (rng.random((2, *shape)) > 0.5)
        block = WriteBlock(axis, 1, 3, masks, covered)
        old = segment[block.get_index()]
        laid_out = np.moveaxis(covered, 0, axis)
        removed = block.get_removed(segment.astype(np.uint8))
        assert removed.dtype == bool and removed.shape == old.shape
        assert np.array_equal(removed, old & laid_out & ~block.get_array())
        assert np.array_equal(block.get_added(segment), block.get_array() & ~old)
        after = segment.copy()  # Remove, then Add, as the effect does
        after[block.get_index()] &= ~removed
        after[block.get_index()] |= block.get_array()
        assert np.array_equal(after[block.get_index()][laid_out], block.get_array()[laid_out])
        assert np.array_equal(after[block.get_index()][~laid_out], old[~laid_out])  # outside: untouched


def test_a_request_that_changes_nothing_makes_no_undo_point():
    segment = np.zeros((4, 5, 6), bool)
    segment[2, 1:3, 1:4] = True
    same = WriteRequest("apply", 0, {2: segment[2].copy()}, segment.shape)
    assert not same.changes(segment)
    record = SegmentRecord(segment.shape)
    record.segment[:] = segment
    record.write(same)
    assert record.undo_stack == [] and record.requests == []
    grown = segment[2].copy()
    grown[4, 5] = True
    assert WriteRequest("apply", 0, {2: grown}, segment.shape).changes(segment)
    shrunk = np.zeros_like(grown)
    assert not WriteRequest("apply", 0, {2: shrunk}, segment.shape).changes(segment)  # covers nothing held
    assert WriteRequest("apply", 0, {2: shrunk}, segment.shape, covered={2: segment[2]}).changes(segment)


@pytest.fixture
def session(tiny_sam, icbm152):
    return SegmentationSession(VolumePredictor(tiny_sam, get_test_volume(icbm152), model_id="tiny"), MATRIX)


def get_kidneys(other):
    """The segment before the actions: the other kidney only."""
    record = SegmentRecord(other.shape)
    record.segment[other] = True
    return record


def check_kept_and_undone(record, other, before):
    """The other kidney survives the last write; undo gives back the segment before it."""
    assert record.segment[other].all()
    record.undo()
    np.testing.assert_array_equal(record.segment, before)


def get_other_kidney(shape):
    mask = np.zeros(shape, bool)
    mask[OTHER_KIDNEY] = True
    return mask


def test_segment_in_roi_keeps_the_segment_outside_the_roi_and_undoes(session):
    axes = MATRIX[:3, :3] / np.linalg.norm(MATRIX[:3, :3], axis=0)
    roi = MarkupsROI(tuple(ijk_to_ras(np.array([35.0, 40.0, 18.0]), MATRIX)), (20.0, 24.0, 14.0),
                     tuple(map(tuple, axes)))
    boxes = get_roi_slice_boxes(roi.get_corners_ras(), MATRIX, session.shape, 0)
    other = get_other_kidney(session.shape)
    record = get_kidneys(other)
    before = record.segment.copy()
    request = session.segment_in_roi(roi, Markups(), NORMAL)
    in_box = np.zeros(session.shape, bool)
    for k, (x0, y0, x1, y1) in boxes.items():
        in_box[k, y0:y1, x0:x1] = True
    written = np.zeros(session.shape, bool)
    for k, mask in request.masks.items():
        written[k] = mask
    assert (other & ~in_box & ~written).any()  # the old rule erased these
    record.write(request)
    np.testing.assert_array_equal(record.segment[~in_box], before[~in_box])
    np.testing.assert_array_equal(record.segment[in_box], written[in_box])
    check_kept_and_undone(record, other, before)


def get_partial_session(icbm152):
    """A session whose tiny SAM previews a click at voxel (18, 40, 35) with a mask that leaves part of the
    slice out: the first of a few seeded random models that does (random weights may fill the whole slice,
    and then nothing of the slice lies outside what Apply writes)."""
    import torch

    from medicosam.models.config import build_sam, get_tiny_config

    volume = get_test_volume(icbm152)
    click = Markups([MarkupsPoint(tuple(get_voxel_ras((18, 40, 35), MATRIX)), True)])
    for seed in range(10):
        torch.manual_seed(seed)
        session = SegmentationSession(VolumePredictor(build_sam(get_tiny_config()), volume, model_id=f"t{seed}"),
                                      MATRIX)
        session.set_markups(click, NORMAL)
        if 0.05 < session.update_preview().mask.mean() < 0.9:
            return session
    raise AssertionError("every seeded tiny SAM fills the slice: no voxel is left outside the mask to keep")


def test_apply_and_propagate_keep_the_segment_outside_what_they_produce_and_undo(icbm152):
    session = get_partial_session(icbm152)
    applied = session.preview.mask
    other = np.zeros(session.shape, bool)
    other[8:31] = ~applied  # the other kidney: on slice 18 all the click's mask leaves out, and around it
    record = get_kidneys(other)
    original = record.segment.copy()
    record.write(session.apply())
    expected = original.copy()
    expected[18] |= applied
    np.testing.assert_array_equal(record.segment, expected)  # the old rule erased other[18]

    before = record.segment.copy()
    config = PropagationConfig(iou_threshold=0.0, max_slices=3)
    request = session.propagate(config, record.segment)
    assert request.slices and any((other[k] & ~request.masks[k]).any() for k in request.slices)  # erased before
    record.write(request)
    for k in request.slices:
        np.testing.assert_array_equal(record.segment[k], before[k] | request.masks[k])  # nothing written before
    check_kept_and_undone(record, other, before)
    check_kept_and_undone(record, other, original)


def test_seeds_are_the_parts_of_the_segment_that_touch_what_was_applied():
    """The other kidney on an applied slice is no seed; a part painted onto the applied mask is; an
    undone apply is dropped; an empty applied mask stays an empty seed (a stop annotation)."""
    applied = np.zeros((20, 30), bool)
    applied[5:10, 5:10] = True
    segment = np.zeros((6, 20, 30), bool)
    segment[1][applied] = True
    segment[1, 9:12, 9:12] = True  # painted onto the object
    segment[1, 15:18, 20:25] = True  # the other kidney
    segment[3, 15:18, 20:25] = True  # the other kidney on a slice whose apply was undone
    accepted = {1: applied, 3: applied, 4: np.zeros_like(applied)}
    seeds = get_seeds(0, accepted, segment)
    assert sorted(seeds) == [1, 4] and not seeds[4].any()
    expected = segment[1].copy()
    expected[15:18, 20:25] = False
    np.testing.assert_array_equal(seeds[1], expected)
