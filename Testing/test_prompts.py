"""Prompt sampling rules: points, centres, boxes, correction clicks and prompts projected from a mask."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import pdist

from medicosam.errors import MedicoSAMError
from medicosam.prompts import (
    CORRECTION_MODES,
    PROPAGATION_MODES,
    InputError,
    Prompts,
    derive_prompts_from_mask,
    get_box,
    get_center_point,
    get_extended_box,
    sample_correction_points,
    sample_point_in_mask,
)


def _rect(shape, rows, cols):
    mask = np.zeros(shape, bool)
    mask[rows[0]: rows[1], cols[0]: cols[1]] = True
    return mask


def _at(mask, point):
    x, y = point
    assert float(x).is_integer() and float(y).is_integer()
    return bool(mask[int(y), int(x)])


# --- Prompts ------------------------------------------------------------------------------------


def test_prompts_empty_and_with_points_append_and_keep_the_rest():
    prompts = Prompts.empty()
    assert prompts.points.shape == (0, 2) and prompts.points.dtype == np.float32
    assert prompts.labels.shape == (0,) and prompts.labels.dtype == np.int64
    assert prompts.box is None and prompts.mask is None and prompts.logits is None

    boxed = Prompts(box=[1, 2, 5, 6])
    first = boxed.with_points([[3, 4]], [1])
    second = first.with_points(np.array([[5.0, 1.0], [0.0, 0.0]]), np.array([0, 1]))
    np.testing.assert_array_equal(second.points, [[3, 4], [5, 1], [0, 0]])
    np.testing.assert_array_equal(second.labels, [1, 0, 1])
    np.testing.assert_array_equal(second.box, [1, 2, 5, 6])
    assert second.box.dtype == np.float32
    assert len(boxed.points) == 0 and len(first.points) == 1  # the originals are unchanged


def test_prompts_reject_mismatched_labels_and_non_2d_masks():
    with pytest.raises(InputError, match="one label per point"):
        Prompts(points=[[1, 2], [3, 4]], labels=[1])
    with pytest.raises(InputError, match="2D mask"):
        Prompts(mask=np.zeros((2, 3, 4), bool))
    assert issubclass(InputError, MedicoSAMError) and issubclass(InputError, ValueError)


# --- random point ---------------------------------------------------------------------------------


def test_sample_point_in_mask_is_inside_seeded_and_varies():
    mask = np.zeros((40, 50), bool)
    mask[5:9, 30:33] = True
    mask[20, 7] = True
    points = [sample_point_in_mask(mask, np.random.default_rng(seed)) for seed in range(60)]
    assert all(p.shape == (2,) and p.dtype == np.float32 and _at(mask, p) for p in points)
    assert len({tuple(p) for p in points}) > 5  # not a fixed pixel
    np.testing.assert_array_equal(sample_point_in_mask(mask, np.random.default_rng(3)), points[3])
    only = np.zeros((10, 10), bool)
    only[7, 2] = True
    np.testing.assert_array_equal(sample_point_in_mask(only, np.random.default_rng(0)), [2, 7])  # x = col


def test_sample_point_in_mask_rejects_empty_and_3d_masks():
    with pytest.raises(InputError, match="empty"):
        sample_point_in_mask(np.zeros((5, 5), bool), np.random.default_rng(0))
    with pytest.raises(InputError, match="2D"):
        sample_point_in_mask(np.ones((2, 5, 5), bool), np.random.default_rng(0))


# --- distance-transform centre ---------------------------------------------------------------------


def test_center_point_of_rectangles():
    odd = _rect((30, 40), (5, 10), (10, 21))  # 5 x 11: unique centre row 7, col 15
    np.testing.assert_array_equal(get_center_point(odd), [15, 7])
    even = _rect((20, 30), (5, 9), (10, 20))  # 4 x 10: four central ties, first in row-major order
    np.testing.assert_array_equal(get_center_point(even), [14, 6])


def test_center_point_of_square_with_a_leg():
    mask = _rect((30, 30), (5, 14), (5, 14))  # 9 x 9 square, centre (9, 9) at distance 5
    mask[11:14, 14:26] = True  # a thin leg: an L-shaped object
    np.testing.assert_array_equal(get_center_point(mask), [9, 9])


def test_center_point_of_two_equal_squares_is_inside_not_between_them():
    mask = _rect((32, 32), (2, 11), (2, 11))  # 9 x 9 square, centre (6, 6)
    mask |= _rect((32, 32), (20, 29), (20, 29))  # the same square, centre (24, 24)
    mask[11:24, 6] = True  # joined by a thin L-shaped path
    mask[24, 7:20] = True
    distances = ndimage.distance_transform_edt(mask)
    assert distances[6, 6] == distances[24, 24] == distances.max() == 5
    assert not mask[15, 15]  # the mean of the two maxima is outside the object
    np.testing.assert_array_equal(get_center_point(mask), [6, 6])  # equal ties: first in row-major order


def test_center_point_of_border_touching_object_stays_off_the_border():
    mask = _rect((20, 20), (0, 10), (0, 4))  # touches the top and left image borders
    # Unpadded, the left column would be 4 px from any background; padded, the border counts.
    np.testing.assert_array_equal(get_center_point(mask), [1, 4])
    full = np.ones((6, 9), bool)
    np.testing.assert_array_equal(get_center_point(full), [4, 2])


# --- boxes ------------------------------------------------------------------------------------------


def test_box_is_exact_with_exclusive_max():
    mask = _rect((30, 40), (3, 8), (10, 21))
    box = get_box(mask)
    assert box.dtype == np.float32
    np.testing.assert_array_equal(box, [10, 3, 21, 8])
    x0, y0, x1, y1 = box.astype(int)
    assert mask[y0:y1, x0:x1].all() and mask.sum() == (x1 - x0) * (y1 - y0)
    single = _rect((5, 5), (4, 5), (0, 1))
    np.testing.assert_array_equal(get_box(single), [0, 4, 1, 5])


def test_box_jitter_only_grows_within_bounds_and_is_seeded():
    mask = _rect((100, 120), (20, 60), (30, 50))  # height 40, width 20
    exact = get_box(mask)
    f = 0.1
    boxes = np.array([get_box(mask, jitter=f, rng=np.random.default_rng(seed)) for seed in range(50)])
    assert (boxes[:, :2] <= exact[:2]).all() and (boxes[:, 2:] >= exact[2:]).all()  # outward only
    grow = np.abs(boxes - exact)
    assert (grow[:, [0, 2]] <= round(f * 20)).all() and (grow[:, [1, 3]] <= round(f * 40)).all()
    assert (grow > 0).any() and len({tuple(b) for b in boxes}) > 10
    np.testing.assert_array_equal(boxes[7], get_box(mask, jitter=f, rng=np.random.default_rng(7)))

    border = _rect((50, 50), (0, 50), (0, 10))  # touches three image borders
    for seed in range(20):
        x0, y0, x1, y1 = get_box(border, jitter=0.5, rng=np.random.default_rng(seed))
        assert (x0, y0, y1) == (0, 0, 50) and 10 <= x1 <= 15


def test_box_jitter_needs_rng_and_a_nonempty_mask():
    with pytest.raises(InputError, match="rng"):
        get_box(_rect((5, 5), (1, 2), (1, 2)), jitter=0.1)
    with pytest.raises(InputError, match="empty"):
        get_box(np.zeros((5, 5), bool))


def test_extended_box_by_fraction_and_by_pixels_is_clipped():
    mask = _rect((100, 100), (10, 30), (40, 80))  # height 20, width 40
    np.testing.assert_array_equal(get_extended_box(mask, 0.0), [40, 10, 80, 30])
    np.testing.assert_array_equal(get_extended_box(mask, 0.1), [36, 8, 84, 32])
    np.testing.assert_array_equal(get_extended_box(mask, 5), [35, 5, 85, 35])
    np.testing.assert_array_equal(get_extended_box(mask, 15), [25, 0, 95, 45])
    with pytest.raises(InputError, match="negative"):
        get_extended_box(mask, -1)


# --- correction clicks ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", CORRECTION_MODES)
def test_correction_points_come_from_the_error_regions(mode):
    target = _rect((60, 60), (10, 40), (10, 40))
    prediction = _rect((60, 60), (20, 50), (10, 40))  # misses rows 10-19, adds rows 40-49
    for seed in range(10):
        points, labels = sample_correction_points(target, prediction, np.random.default_rng(seed), mode)
        assert points.shape == (2, 2) and points.dtype == np.float32
        assert labels.tolist() == [1, 0] and labels.dtype == np.int64
        assert _at(target & ~prediction, points[0]) and _at(prediction & ~target, points[1])


def test_center_correction_clicks_the_largest_error_component():
    target = _rect((70, 70), (10, 50), (10, 50))
    prediction = target.copy()
    # False negatives: a thin strip (2 x 40 = 80 px, the largest) and a compact square (7 x 7, deeper).
    prediction[10:12, 10:50] = False
    prediction[30:37, 30:37] = False
    # False positives: a thin strip (2 x 55 = 110 px, the largest) and a compact block (6 x 7).
    prediction[52:54, 5:60] = True
    prediction[2:8, 55:62] = True
    points, labels = sample_correction_points(target, prediction, np.random.default_rng(0), "center")
    # Centres of the strips: the middle of their plateaus (ties go to the first in row-major order).
    np.testing.assert_array_equal(points, [[29, 10], [32, 52]])
    np.testing.assert_array_equal(labels, [1, 0])


@pytest.mark.parametrize("mode", CORRECTION_MODES)
def test_correction_fallbacks(mode):
    target = _rect((40, 40), (10, 20), (10, 20))
    # No false negatives: the positive goes into the (correctly predicted) object.
    superset = _rect((40, 40), (8, 25), (8, 25))
    points, _ = sample_correction_points(target, superset, np.random.default_rng(1), mode)
    assert _at(target, points[0]) and _at(superset & ~target, points[1])
    # No false positives: the negative goes into the bbox grown by 3 px, outside the object.
    ring = _rect((40, 40), (7, 23), (7, 23)) & ~target
    for prediction in (target, _rect((40, 40), (12, 15), (12, 15)), np.zeros((40, 40), bool)):
        for seed in range(5):
            points, labels = sample_correction_points(target, prediction, np.random.default_rng(seed), mode)
            assert _at(ring, points[1]) and labels.tolist() == [1, 0]
            assert _at(target & ~prediction if (target & ~prediction).any() else target, points[0])
    # The ring is clipped at the image border.
    corner = _rect((40, 40), (0, 5), (0, 5))
    points, _ = sample_correction_points(corner, corner, np.random.default_rng(0), mode)
    assert _at(_rect((40, 40), (0, 8), (0, 8)) & ~corner, points[1])


def test_correction_points_are_seeded_and_validate_input():
    target = _rect((50, 50), (10, 30), (10, 30))
    prediction = _rect((50, 50), (15, 40), (5, 25))
    a = sample_correction_points(target, prediction, np.random.default_rng(42))
    b = sample_correction_points(target, prediction, np.random.default_rng(42))
    np.testing.assert_array_equal(a[0], b[0])
    assert len({tuple(sample_correction_points(target, prediction, np.random.default_rng(s))[0].ravel())
                for s in range(10)}) > 1
    with pytest.raises(InputError, match="empty"):
        sample_correction_points(np.zeros((5, 5)), np.ones((5, 5)), np.random.default_rng(0))
    with pytest.raises(InputError, match="whole slice"):
        sample_correction_points(np.ones((5, 5)), np.ones((5, 5)), np.random.default_rng(0))
    with pytest.raises(InputError, match="shape"):
        sample_correction_points(target, prediction[:-1], np.random.default_rng(0))
    with pytest.raises(InputError, match="correction mode"):
        sample_correction_points(target, prediction, np.random.default_rng(0), mode="nearest")


# --- prompts projected from a neighbouring slice's mask -----------------------------------------------


def _two_blobs():
    mask = np.zeros((64, 80), bool)
    rows, cols = np.ogrid[:64, :80]
    mask |= (rows - 20) ** 2 + (cols - 20) ** 2 <= 8 ** 2
    mask |= (rows - 40) ** 2 + (cols - 55) ** 2 <= 10 ** 2
    return mask


def test_derive_single_point_is_the_center():
    mask = _two_blobs()
    prompts = derive_prompts_from_mask(mask, "single_point")
    np.testing.assert_array_equal(prompts.points, [get_center_point(mask)])
    np.testing.assert_array_equal(prompts.labels, [1])
    np.testing.assert_array_equal(prompts.points, [[55, 40]])  # centre of the larger disc
    assert prompts.box is None and prompts.mask is None


def test_derive_points_are_distance_peaks_inside_and_outside():
    mask = _two_blobs()
    box = get_extended_box(mask, 0.25)
    prompts = derive_prompts_from_mask(mask, "points", box_extension=0.25)
    positives, negatives = prompts.points[prompts.labels == 1], prompts.points[prompts.labels == 0]
    assert all(_at(mask, p) for p in positives) and not any(_at(mask, p) for p in negatives)
    blobs, _ = ndimage.label(mask)
    assert {blobs[int(y), int(x)] for x, y in positives} == {1, 2}  # a positive in each disc
    assert [55, 40] in positives.tolist() and [20, 20] in positives.tolist()  # the disc centres
    assert len(negatives) > 0
    assert pdist(positives, "chebyshev").min() >= 3 and pdist(negatives, "chebyshev").min() >= 5
    assert ((negatives >= box[:2]) & (negatives < box[2:])).all()
    assert prompts.box is None and prompts.mask is None
    # Without an extension a filled rectangle has nothing outside inside its box: positives only.
    rect = derive_prompts_from_mask(_rect((30, 30), (5, 16), (5, 16)), "points")
    assert rect.labels.tolist() == [1] and rect.points.tolist() == [[10, 10]]


def test_derive_box_and_mask_modes():
    mask = _two_blobs()
    box = derive_prompts_from_mask(mask, "box", box_extension=0.05)
    np.testing.assert_array_equal(box.box, get_extended_box(mask, 0.05))
    assert len(box.points) == 0 and box.mask is None
    box_mask = derive_prompts_from_mask(mask, "box_mask", box_extension=3)
    np.testing.assert_array_equal(box_mask.box, get_extended_box(mask, 3))
    np.testing.assert_array_equal(box_mask.mask, mask)
    points_mask = derive_prompts_from_mask(mask, "points_mask", box_extension=0.1)
    points = derive_prompts_from_mask(mask, "points", box_extension=0.1)
    np.testing.assert_array_equal(points_mask.points, points.points)
    np.testing.assert_array_equal(points_mask.mask, mask)
    assert points_mask.box is None


def test_derive_handles_tiny_masks_and_rejects_bad_input():
    dot = _rect((20, 20), (19, 20), (0, 1))
    for mode in PROPAGATION_MODES:
        prompts = derive_prompts_from_mask(dot, mode, box_extension=0.05)
        assert (prompts.labels == 1).sum() >= (mode in ("single_point", "points", "points_mask"))
        assert all(_at(dot, p) for p in prompts.points[prompts.labels == 1])
    with pytest.raises(InputError, match="unknown propagation mode"):
        derive_prompts_from_mask(dot, "mask")
    with pytest.raises(InputError, match="empty"):
        derive_prompts_from_mask(np.zeros((5, 5)), "box")
