"""Dice, semantic Dice and object extraction on hand-made masks (conventions: docs/evaluation.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medicosam.errors import InputError
from medicosam.overlap import get_dice
from medicosam_training.evaluation.metrics import get_mean_dice, get_semantic_dice
from medicosam_training.evaluation.protocol import get_objects


def _square(shape=(8, 8), rows=slice(2, 4), cols=slice(2, 4)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


def test_dice_empty_and_full_cases():
    target = _square()
    empty = np.zeros_like(target)
    assert get_dice(empty, target) == 0.0  # nothing predicted
    assert get_dice(target, empty) == 0.0  # something predicted where nothing is
    assert get_dice(empty, empty) == 1.0  # convention: both empty is a perfect answer
    assert math.isnan(get_dice(empty, empty, empty_value=math.nan))
    assert get_dice(target, target) == 1.0


def test_dice_partial_overlap_by_hand():
    target = _square(rows=slice(2, 4), cols=slice(2, 4))  # 4 pixels
    prediction = _square(rows=slice(2, 4), cols=slice(3, 5))  # 4 pixels, 2 shared
    assert get_dice(prediction, target) == pytest.approx(2 * 2 / (4 + 4))
    prediction = _square(rows=slice(2, 5), cols=slice(2, 4))  # 6 pixels, all 4 target pixels
    assert get_dice(prediction, target) == pytest.approx(2 * 4 / (6 + 4))
    # integer masks: any non-zero value is foreground
    assert get_dice(prediction.astype(np.uint8) * 7, target.astype(np.int32)) == pytest.approx(0.8)


def test_dice_3d_and_shape_mismatch():
    target = np.zeros((3, 4, 4), dtype=bool)
    target[0, :2, :2] = target[1, :2, :2] = True  # 8 voxels
    prediction = np.zeros_like(target)
    prediction[1, :2, :2] = prediction[2, :2, :2] = True  # 8 voxels, 4 shared
    assert get_dice(prediction, target) == pytest.approx(0.5)
    with pytest.raises(InputError, match="differ"):
        get_dice(prediction[0], target)
    with pytest.raises(InputError, match="differs from target shape"):
        get_semantic_dice(prediction[0], target)


def test_semantic_dice_per_class():
    target = np.zeros((6, 6), dtype=np.int32)
    target[:2, :2] = 1  # class 1: 4 px
    target[4:, 4:] = 2  # class 2: 4 px
    prediction = np.zeros_like(target)
    prediction[:2, :1] = 1  # 2 px of class 1, all correct
    prediction[3, 3] = 3  # class 3 predicted but absent from the target
    per_class = get_semantic_dice(prediction, target)
    assert set(per_class) == {1, 2, 3}
    assert per_class[1] == pytest.approx(2 * 2 / (2 + 4))
    assert per_class[2] == 0.0  # missed entirely
    assert per_class[3] == 0.0  # false positive class
    explicit = get_semantic_dice(prediction, target, classes=[1, 4])
    assert explicit[1] == per_class[1] and math.isnan(explicit[4])  # absent from both: not scored
    assert get_mean_dice(explicit) == pytest.approx(per_class[1])
    assert math.isnan(get_mean_dice({5: math.nan}))


def test_semantic_dice_3d():
    target = np.zeros((4, 5, 5), dtype=np.uint8)
    target[1:3, 1:4, 1:4] = 1
    prediction = target.copy()
    prediction[1] = 0
    assert get_semantic_dice(prediction, target) == {1: pytest.approx(2 * 9 / (9 + 18))}


def test_objects_components_size_filter_and_ids():
    label = np.zeros((10, 12), dtype=np.int32)
    label[0:5, 0:5] = 1  # 25 px
    label[7:9, 0:2] = 1  # 4 px: below min_size
    label[0:4, 7:12] = 1  # 20 px: kept (min_size is inclusive)
    label[6:10, 6:12] = 2  # 24 px
    label[5, 5] = 1  # diagonal neighbour of the first square: joins it (8-connectivity)
    objects = get_objects(label, min_size=20)
    assert [(o.class_id, o.object_id, o.size) for o in objects] == [(1, "1.1", 26), (1, "1.2", 20), (2, "2.1", 24)]
    assert np.array_equal(objects[1].get_mask(), np.pad(np.ones((4, 5), bool), ((0, 6), (7, 0))))
    assert [o.object_id for o in get_objects(label, classes=[2], min_size=20)] == ["2.1"]
    whole = get_objects(label, min_size=20, split_components=False)
    assert [(o.object_id, o.size) for o in whole] == [("1", 50), ("2", 24)]
    assert np.array_equal(whole[0].get_mask(), label == 1)


def test_objects_3d_connectivity():
    label = np.zeros((3, 4, 4), dtype=np.int32)
    label[0, 0, 0] = label[1, 1, 1] = 1  # corner-touching voxels: one 26-connected object
    label[2, 3, 3] = 1
    assert [o.size for o in get_objects(label, min_size=1)] == [2, 1]
