"""Mask propagation through a real 3D structure (ICBM152 white matter) with a scripted predictor.

The predictor stands in for SAM's decision only: it returns the ground-truth slice restricted to the
2D connected components the prompts touch (a positive point inside, a box overlapping, a mask
overlapping). So propagation has to follow the real anatomy through its own prompts, and the
control flow (which slices are predicted, where it stops, how gaps are filled) is checked exactly.
A real-SAM propagation test lives with the predictor tests.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
import pytest
from scipy import ndimage

from medicosam.errors import InputError
from medicosam.prompts import Prompts, derive_prompts_from_mask, get_extended_box
from medicosam.prompts import get_largest_component as largest_component
from medicosam.propagation import PropagationConfig, StopReason, propagate_mask

_IN_PLANE = np.ones((3, 3), bool)


@pytest.fixture(scope="module")
def white_matter(icbm152) -> np.ndarray:
    """The largest connected component of the 2 mm white matter (wm > 127): about 95 x 117 x 99."""
    return largest_component(icbm152["wm"])


def _extent(volume: np.ndarray, axis: int) -> Tuple[int, int]:
    present = np.flatnonzero(volume.any(axis=tuple(a for a in range(3) if a != axis)))
    return int(present[0]), int(present[-1])


def _touched_components(gt: np.ndarray, prompts: Prompts) -> np.ndarray:
    labels, _ = ndimage.label(gt, _IN_PLANE)
    keep = {labels[int(y), int(x)] for (x, y) in prompts.points[prompts.labels == 1]}
    if prompts.box is not None:
        x0, y0, x1, y1 = prompts.box.astype(int)
        keep |= set(np.unique(labels[y0:y1, x0:x1]).tolist())
    if prompts.mask is not None:
        keep |= set(np.unique(labels[prompts.mask]).tolist())
    keep.discard(0)
    return np.isin(labels, sorted(keep))


class ScriptedPredictor:
    """`predict(index, prompts)` over slices of `volume` along `axis`; records every call."""

    def __init__(self, volume: np.ndarray, axis: int = 0, shift_from: int = None):
        self.volume, self.axis, self.shift_from = volume, axis, shift_from
        self.calls: List[Tuple[int, Prompts]] = []
        self.outputs = {}

    def __call__(self, index: int, prompts: Prompts) -> np.ndarray:
        self.calls.append((index, prompts))
        gt = np.take(self.volume, index, self.axis)
        if self.shift_from is not None and index >= self.shift_from:
            mask = np.roll(gt, 20, axis=1)  # the model suddenly jumps to a displaced structure
        else:
            mask = _touched_components(gt, prompts)
        self.outputs[index] = mask
        return mask

    @property
    def indices(self) -> List[int]:
        return [index for index, _ in self.calls]


def _iou(a, b):
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


@pytest.mark.parametrize("axis", [0, 1])
def test_propagation_reaches_exactly_the_extent_of_the_structure(white_matter, axis):
    first, last = _extent(white_matter, axis)
    seed = (first + last) // 2
    predict = ScriptedPredictor(white_matter, axis)
    config = PropagationConfig(mode="box_mask", iou_threshold=0.0, box_extension=0.05)
    seeds = {seed: np.take(white_matter, seed, axis)}
    result = propagate_mask(predict, seeds, white_matter.shape[axis], config)

    assert (min(result.masks), max(result.masks)) == (first, last)
    assert list(result.masks) == list(range(first, last + 1))
    assert result.stopped_at == {"down": first - 1, "up": last + 1}
    assert result.reasons == {"down": StopReason.EMPTY, "up": StopReason.EMPTY} and not result.cancelled
    # Lazy: one call per slice reached, plus the one empty slice that ended each side; down first.
    assert predict.indices == list(range(seed - 1, first - 2, -1)) + list(range(seed + 1, last + 2))
    for index, mask in result.masks.items():
        gt = np.take(white_matter, index, axis)
        assert mask.dtype == bool and not (mask & ~gt).any()
    found = np.stack([result.masks[i] for i in range(first, last + 1)], axis=axis)
    expected = np.take(white_matter, np.arange(first, last + 1), axis)
    assert 2 * np.count_nonzero(found & expected) / (found.sum() + expected.sum()) > 0.97


def test_prompts_are_chained_from_the_neighbouring_prediction(white_matter):
    first, last = _extent(white_matter, 0)
    seed = (first + last) // 2
    predict = ScriptedPredictor(white_matter)
    config = PropagationConfig(mode="box", iou_threshold=0.0, box_extension=0.1, max_slices=6)
    result = propagate_mask(predict, {seed: white_matter[seed]}, white_matter.shape[0], config)
    for index, prompts in predict.calls:
        previous = result.masks[index + 1 if index < seed else index - 1]
        np.testing.assert_array_equal(prompts.box, get_extended_box(previous, 0.1))
        assert len(prompts.points) == 0 and prompts.mask is None


def test_low_iou_stops_a_side_on_real_anatomy(white_matter):
    predict = ScriptedPredictor(white_matter)
    first, last = _extent(white_matter, 0)
    seed = (first + last) // 2
    config = PropagationConfig(mode="box", iou_threshold=0.5, box_extension=0.05)
    result = propagate_mask(predict, {seed: white_matter[seed]}, white_matter.shape[0], config)

    assert result.reasons == {"down": StopReason.LOW_IOU, "up": StopReason.LOW_IOU}
    low, high = min(result.masks), max(result.masks)
    assert first < low and high < last  # white matter thins out fast: both sides stop inside it
    assert result.stopped_at == {"down": low - 1, "up": high + 1}
    reason = "IoU with the previous slice below the stop threshold"
    assert result.describe_stops() == f"down: {reason} at slice {low - 1}; up: {reason} at slice {high + 1}"
    assert set(predict.indices) == set(range(low - 1, high + 2)) - {seed}
    for rejected, neighbour in ((low - 1, low), (high + 1, high)):
        assert rejected not in result.masks
        assert _iou(result.masks[neighbour], predict.outputs[rejected]) < 0.5
    for index in range(low, high):
        assert _iou(result.masks[index], result.masks[index + 1]) >= 0.5


def test_sudden_jump_stops_before_the_jump(white_matter):
    first, last = _extent(white_matter, 0)
    seed = (first + last) // 2
    predict = ScriptedPredictor(white_matter, shift_from=seed + 4)
    config = PropagationConfig(mode="single_point", iou_threshold=0.2, direction="up")
    result = propagate_mask(predict, {seed: white_matter[seed]}, white_matter.shape[0], config)
    assert list(result.masks) == [seed, seed + 1, seed + 2, seed + 3]
    assert predict.indices == [seed + 1, seed + 2, seed + 3, seed + 4]
    assert result.stopped_at["up"] == seed + 4 and result.reasons["up"] == StopReason.LOW_IOU


@pytest.mark.parametrize(("lower", "upper"), [(40, 42), (40, 45), (40, 46)])
def test_gaps_are_filled_from_both_ends_with_a_union_in_the_middle(white_matter, lower, upper):
    predict = ScriptedPredictor(white_matter)
    seeds = {lower: white_matter[lower], upper: white_matter[upper]}
    config = PropagationConfig(mode="box", iou_threshold=0.99, max_slices=0)  # no outward slices
    result = propagate_mask(predict, seeds, white_matter.shape[0], config)

    middle = (lower + upper) // 2
    if (upper - lower) % 2:  # odd: from below up to the middle, from above down to middle + 1
        expected = list(range(lower + 1, middle + 1)) + list(range(upper - 1, middle, -1))
    else:  # even: both sides stop next to the middle, which comes last, prompted with the union
        expected = list(range(lower + 1, middle)) + list(range(upper - 1, middle, -1)) + [middle]
        union = result.masks[middle - 1] | result.masks[middle + 1]
        np.testing.assert_array_equal(predict.calls[-1][1].box, get_extended_box(union, config.box_extension))
        assert _iou(union, result.masks[middle - 1]) < 1 and _iou(union, result.masks[middle + 1]) < 1
    assert predict.indices == expected
    # No IoU threshold inside a gap: every slice is written even though IoU < 0.99.
    assert list(result.masks) == list(range(lower, upper + 1))
    assert result.reasons == {"down": StopReason.MAX_SLICES, "up": StopReason.MAX_SLICES}
    assert result.stopped_at == {"down": lower - 1, "up": upper + 1}


def test_gap_middle_prompt_is_the_union_of_both_seeds(white_matter):
    lower, upper = 30, 32
    predict = ScriptedPredictor(white_matter)
    seeds = {lower: white_matter[lower], upper: white_matter[upper]}
    config = PropagationConfig(mode="points_mask", max_slices=0)
    result = propagate_mask(predict, seeds, white_matter.shape[0], config)
    ((index, prompts),) = predict.calls
    assert index == 31 and 31 in result.masks
    expected = derive_prompts_from_mask(seeds[lower] | seeds[upper], "points_mask", config.box_extension)
    np.testing.assert_array_equal(prompts.mask, seeds[lower] | seeds[upper])
    np.testing.assert_array_equal(prompts.points, expected.points)


def test_max_slices_limits_each_side(white_matter):
    predict = ScriptedPredictor(white_matter)
    config = PropagationConfig(mode="box_mask", iou_threshold=0.0, max_slices=3)
    seeds = {45: white_matter[45], 50: white_matter[50]}
    result = propagate_mask(predict, seeds, white_matter.shape[0], config)
    assert predict.indices == [44, 43, 42, 51, 52, 53, 46, 47, 49, 48]
    assert list(result.masks) == list(range(42, 54))
    assert result.stopped_at == {"down": 41, "up": 54}
    assert result.reasons == {"down": StopReason.MAX_SLICES, "up": StopReason.MAX_SLICES}


def test_max_slices_at_the_volume_border_reports_the_border(white_matter):
    volume = white_matter[40:45]
    predict = ScriptedPredictor(volume)
    config = PropagationConfig(mode="box", iou_threshold=0.0, max_slices=10)
    result = propagate_mask(predict, {2: volume[2]}, 5, config)
    assert predict.indices == [1, 0, 3, 4] and list(result.masks) == [0, 1, 2, 3, 4]
    assert result.stopped_at == {"down": None, "up": None}
    assert result.reasons == {"down": StopReason.BORDER, "up": StopReason.BORDER}
    assert result.describe_stops() == "down: reached the volume edge; up: reached the volume edge"


def test_slice_range_bounds_propagation_like_an_roi(white_matter):
    predict = ScriptedPredictor(white_matter)
    config = PropagationConfig(mode="box", iou_threshold=0.0, max_slices=4, slice_range=(43, 60))
    result = propagate_mask(predict, {45: white_matter[45]}, white_matter.shape[0], config)
    assert predict.indices == [44, 43, 46, 47, 48, 49]
    assert result.stopped_at == {"down": 42, "up": 50}
    assert result.reasons == {"down": StopReason.RANGE_END, "up": StopReason.MAX_SLICES}
    assert "end of the slice range" in result.describe_stops()
    with pytest.raises(InputError, match="beyond the slice range 43..60"):
        propagate_mask(predict, {40: white_matter[40]}, white_matter.shape[0], config)
    with pytest.raises(InputError, match="slice_range"):
        PropagationConfig(slice_range=(10, 5))


@pytest.mark.parametrize("direction", ["up", "down"])
def test_one_direction_only(white_matter, direction):
    first, last = _extent(white_matter, 1)
    seed = (first + last) // 2
    predict = ScriptedPredictor(white_matter, axis=1)
    config = PropagationConfig(mode="box_mask", iou_threshold=0.0, direction=direction)
    result = propagate_mask(predict, {seed: white_matter[:, seed]}, white_matter.shape[1], config)
    other = "down" if direction == "up" else "up"
    if direction == "up":
        assert predict.indices == list(range(seed + 1, last + 2))
        assert list(result.masks) == list(range(seed, last + 1))
    else:
        assert predict.indices == list(range(seed - 1, first - 2, -1))
        assert list(result.masks) == list(range(first, seed + 1))
    assert result.reasons == {direction: StopReason.EMPTY, other: StopReason.NOT_REQUESTED}
    assert result.stopped_at[other] == (seed + 1 if other == "up" else seed - 1)
    assert f"{other}: not requested" in result.describe_stops().split("; ")
    assert f"{direction}: empty mask at slice {result.stopped_at[direction]}" in result.describe_stops()


def test_empty_seed_is_a_stop_annotation(white_matter):
    first, last = _extent(white_matter, 0)
    seed = (first + last) // 2
    predict = ScriptedPredictor(white_matter)
    seeds = {seed: white_matter[seed], seed + 4: np.zeros_like(white_matter[seed])}
    config = PropagationConfig(mode="box_mask", iou_threshold=0.0, max_slices=2)
    result = propagate_mask(predict, seeds, white_matter.shape[0], config)
    assert predict.indices == [seed - 1, seed - 2, seed + 1, seed + 2, seed + 3]  # never the stop slice
    assert list(result.masks) == list(range(seed - 2, seed + 4))
    assert result.stopped_at["up"] == seed + 4 and result.reasons["up"] == StopReason.STOP_SEED


def test_cancellation_returns_what_was_done(white_matter):
    first, last = _extent(white_matter, 0)
    seed = (first + last) // 2
    predict = ScriptedPredictor(white_matter)
    config = PropagationConfig(mode="box_mask", iou_threshold=0.0)
    checks = []

    def should_cancel():
        checks.append(len(predict.calls))
        return len(predict.calls) >= 5

    calls = []
    result = propagate_mask(predict, {seed: white_matter[seed]}, white_matter.shape[0], config,
                            progress=lambda d, t: calls.append((d, t)), should_cancel=should_cancel)
    assert result.cancelled
    assert calls[-1] == (5, white_matter.shape[0] - 1)  # cancelled: the bar does not jump to 100%
    assert result.describe_stops() == f"down: cancelled at slice {seed - 6}; up: cancelled at slice {seed + 1}"
    assert predict.indices == [seed - 1, seed - 2, seed - 3, seed - 4, seed - 5]
    assert checks == [0, 1, 2, 3, 4, 5]  # checked before every slice, never after cancelling
    assert list(result.masks) == list(range(seed - 5, seed + 1))
    assert result.stopped_at == {"down": seed - 6, "up": seed + 1}
    assert result.reasons == {"down": StopReason.CANCELLED, "up": StopReason.CANCELLED}


def test_progress_reports_each_slice_and_ends_at_the_total(white_matter):
    first, last = _extent(white_matter, 0)
    seed = (first + last) // 2
    predict = ScriptedPredictor(white_matter)
    calls = []
    seeds = {seed: white_matter[seed], seed + 6: white_matter[seed + 6]}
    config = PropagationConfig(mode="box_mask", iou_threshold=0.0)
    propagate_mask(predict, seeds, white_matter.shape[0], config, progress=lambda d, t: calls.append((d, t)))
    n = white_matter.shape[0]
    most = seed + (n - 1 - seed - 6) + 5  # both sides to the border plus the gap
    assert len(predict.calls) < most  # the sides stop early at the empty slices
    assert calls[:-1] == [(done, most) for done in range(len(predict.calls) + 1)]  # a stable total
    assert calls[-1] == (len(predict.calls), len(predict.calls))  # finishes full


def test_invalid_input_is_rejected_with_clear_errors(white_matter):
    predict = ScriptedPredictor(white_matter)
    n = white_matter.shape[0]
    with pytest.raises(InputError, match="no seed"):
        propagate_mask(predict, {}, n)
    with pytest.raises(InputError, match="outside"):
        propagate_mask(predict, {n: white_matter[0]}, n)
    with pytest.raises(InputError, match="different shapes"):
        propagate_mask(predict, {1: white_matter[1], 3: white_matter[3, :-1]}, n)
    with pytest.raises(InputError, match="returned shape"):
        propagate_mask(lambda i, p: np.ones((3, 3), bool), {50: white_matter[50]}, n)
    for bad in ({"mode": "mask"}, {"direction": "sideways"}, {"iou_threshold": 1.5}, {"max_slices": -1}):
        with pytest.raises(InputError):
            PropagationConfig(**bad)
    assert predict.calls == []
