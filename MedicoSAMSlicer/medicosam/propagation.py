"""Propagate an object's mask from seed slices through a volume, one slice at a time.

micro-sam's rule (`segment_mask_in_volume`): from the outermost seed slices outward, the prompts
for slice z come from the mask just predicted on its neighbour (chained, not from the seed); a side
stops at an empty mask or when IoU(neighbour, new) falls below a threshold (that slice is not
written). Gaps between seed slices are filled from both ends toward the middle, without an IoU
threshold; an equidistant middle slice is prompted with the union of its two neighbours.

Additions: an empty seed mask is a stop annotation (the structure is absent there: nothing is
written on or past it), a range limit, one-sided propagation, progress and cancellation. The
predictor is a callable, so embeddings are computed only for the slices actually reached.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .errors import InputError
from .options import option
from .overlap import get_iou
from .prompts import PROPAGATION_MODES, Prompts, derive_prompts_from_mask, get_mask

DIRECTIONS = ("both", "up", "down")


class StopReason(str, enum.Enum):
    """Why propagation on one side ("up" = increasing index, "down") ended."""

    BORDER = "border"  # reached the first / last slice of the volume
    EMPTY = "empty"  # the predicted mask was empty
    LOW_IOU = "low_iou"  # IoU with the neighbouring slice's mask fell below the threshold
    MAX_SLICES = "max_slices"  # the range limit was reached
    STOP_SEED = "stop_seed"  # the outermost seed on that side is empty (a stop annotation)
    NOT_REQUESTED = "not_requested"  # the configured direction excludes this side
    RANGE_END = "range_end"  # the end of the configured slice range (e.g. an ROI's extent)
    CANCELLED = "cancelled"  # should_cancel() returned True before this side finished

    @property
    def description(self) -> str:
        """Words for a user (the `medicosam segment` summary)."""
        return _STOP_DESCRIPTIONS[self]


_STOP_DESCRIPTIONS = {
    StopReason.BORDER: "reached the volume edge",
    StopReason.EMPTY: "empty mask",
    StopReason.LOW_IOU: "IoU with the previous slice below the stop threshold",
    StopReason.MAX_SLICES: "slice limit (max_slices)",
    StopReason.STOP_SEED: "empty seed slice",
    StopReason.NOT_REQUESTED: "not requested",
    StopReason.RANGE_END: "end of the slice range (ROI)",
    StopReason.CANCELLED: "cancelled",
}


@dataclasses.dataclass
class PropagationConfig:
    """How to propagate (defaults: micro-sam's annotator).

    The one declaration of the propagation settings: `medicosam segment`'s options, the effect's
    parameters and the 3D evaluation's result columns are derived from these fields.
    """

    mode: str = option("single_point", "prompts derived from the neighbouring slice's mask",
                       choices=PROPAGATION_MODES)
    iou_threshold: float = option(0.5, "stop a side when IoU(previous slice's mask, new mask) falls below this")
    box_extension: float = option(0.05, "grow derived boxes by this fraction of their side (>= 1: pixels)")
    direction: str = option("both", "which side of the seed slices to propagate to (gaps are always filled): "
                            "up is increasing slice index", choices=DIRECTIONS)
    max_slices: Optional[int] = option(None, "at most this many slices beyond the outermost seeds, per side",
                                       metavar="N")
    slice_range: Optional[Tuple[int, int]] = option(None, "the first and last slice it may reach, inclusive "
                                                    "(an ROI's extent)", metavar="INDEX")

    def __post_init__(self) -> None:
        if self.mode not in PROPAGATION_MODES:
            raise InputError(f"unknown propagation mode {self.mode!r}: use one of {PROPAGATION_MODES}")
        if self.direction not in DIRECTIONS:
            raise InputError(f"unknown direction {self.direction!r}: use one of {DIRECTIONS}")
        if not 0.0 <= self.iou_threshold <= 1.0:
            raise InputError(f"iou_threshold {self.iou_threshold} is outside [0, 1]")
        if self.box_extension < 0:
            raise InputError(f"box_extension {self.box_extension} is negative: use 0 or more")
        if self.max_slices is not None and self.max_slices < 0:
            raise InputError(f"max_slices {self.max_slices} is negative: use 0 or more, or leave it unset for no "
                             "limit")
        if self.slice_range is not None and not (len(self.slice_range) == 2 and 0 <= self.slice_range[0]
                                                 <= self.slice_range[1]):
            raise InputError(f"slice_range {self.slice_range} must be (first, last) with 0 <= first <= last")


@dataclasses.dataclass
class PropagationResult:
    """What propagation produced.

    Attributes:
        masks: slice index -> 2D bool mask, for every non-empty seed and every accepted slice.
        stopped_at: per side ("up", "down"), the first slice beyond the result that was not written
            (the rejected slice for EMPTY / LOW_IOU), or None when the result reaches the volume border.
        reasons: per side, the StopReason.
        cancelled: True when should_cancel() interrupted the run (masks hold what was done).
    """

    masks: Dict[int, np.ndarray]
    stopped_at: Dict[str, Optional[int]]
    reasons: Dict[str, StopReason]
    cancelled: bool = False

    def describe_stops(self) -> str:
        """Why and where each side stopped, e.g. "down: empty mask at slice 40; up: reached the volume edge"."""
        parts = []
        for side in ("down", "up"):
            reason, at = self.reasons[side], self.stopped_at[side]
            where = f" at slice {at}" if at is not None and reason != StopReason.NOT_REQUESTED else ""
            parts.append(f"{side}: {reason.description}{where}")
        return "; ".join(parts)


def get_volume_mask(masks: Dict[int, np.ndarray], shape_kji, axis: int) -> np.ndarray:
    """The (K, J, I) bool volume holding slice masks {slice index: 2D mask} along `axis`."""
    volume = np.zeros(tuple(shape_kji)[:3], dtype=bool)
    view = np.moveaxis(volume, axis, 0)
    for index, mask in masks.items():
        view[index] = mask
    return volume


class _Run:
    """State of one propagate_mask call: the predictor, the written masks, progress and cancellation.

    The progress total stays the most slices the run may segment, so a progress bar does not jump when
    a side stops early; `finish` reports done == total at the end of a complete run.
    """

    def __init__(self, predict, config, total, progress, should_cancel):
        self.predict, self.config = predict, config
        self.total, self.done = total, 0
        self.progress, self.should_cancel = progress, should_cancel
        self.masks: Dict[int, np.ndarray] = {}
        self.cancelled = False

    def segment(self, index: int, prompt_mask: np.ndarray) -> Optional[np.ndarray]:
        """The predicted mask of slice `index` prompted from `prompt_mask`; None once cancelled."""
        self.cancelled = self.cancelled or (self.should_cancel is not None and bool(self.should_cancel()))
        if self.cancelled:
            return None
        prompts = derive_prompts_from_mask(prompt_mask, self.config.mode, self.config.box_extension)
        mask = get_mask(self.predict(index, prompts))
        if mask.shape != prompt_mask.shape:
            raise InputError(f"predict returned shape {mask.shape} for slice {index}, "
                                   f"expected {prompt_mask.shape}: return the 2D mask of that slice")
        self.done += 1
        self.report()
        return mask

    def report(self) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total)

    def finish(self) -> None:
        """The last report: every slice that was segmented out of as many."""
        self.total = self.done
        self.report()

    def chain(self, start: int, stop: int, step: int,
              threshold: Optional[float]) -> Tuple[int, Optional[StopReason]]:
        """Segment start+step .. stop (inclusive), each slice prompted from the one before.

        Returns the last written index and why it stopped early (None: it reached `stop`): an empty
        mask, IoU below `threshold` (None: no threshold) or cancellation.
        """
        index = start
        while index != stop:
            previous = self.masks[index]
            mask = self.segment(index + step, previous)
            if mask is None:
                return index, StopReason.CANCELLED
            if not mask.any():
                reason = StopReason.EMPTY
            elif threshold is not None and get_iou(previous, mask) < threshold:
                reason = StopReason.LOW_IOU
            else:
                index += step
                self.masks[index] = mask
                continue
            return index, reason
        return index, None


def _get_seeds(seeds: Dict[int, np.ndarray], n_slices: int) -> Dict[int, np.ndarray]:
    if not seeds:
        raise InputError("no seed slices: segment the object on at least one slice first")
    checked = {int(index): get_mask(mask) for index, mask in sorted(seeds.items())}
    outside = [index for index in checked if not 0 <= index < n_slices]
    if outside:
        raise InputError(f"seed slices {outside} are outside the volume's {n_slices} slices")
    shapes = {mask.shape for mask in checked.values()}
    if len(shapes) > 1:
        raise InputError(f"seed masks have different shapes {sorted(shapes)}: give slices of one axis")
    return checked


def _get_bounds(config: PropagationConfig, n_slices: int) -> Tuple[int, int]:
    """(first, last) slice propagation may reach: the volume, narrowed by `slice_range`."""
    first, last = config.slice_range or (0, n_slices - 1)
    return max(int(first), 0), min(int(last), n_slices - 1)


def _get_outward_ranges(seeds: Dict[int, np.ndarray], n_slices: int,
                        config: PropagationConfig) -> Dict[str, Tuple[int, int, int]]:
    """Per side: (seed index, last index to reach, step), the last one clipped by max_slices and the range."""
    lowest, highest = min(seeds), max(seeds)
    first, last = _get_bounds(config, n_slices)
    if lowest < first or highest > last:
        raise InputError(f"seed slices {sorted(seeds)} reach beyond the slice range {first}..{last}: "
                               "apply masks inside the ROI, or move the ROI over them")
    limit = n_slices if config.max_slices is None else config.max_slices
    return {"down": (lowest, max(lowest - limit, first), -1), "up": (highest, min(highest + limit, last), 1)}


def _propagate_outward(run: _Run, side: str, seed: int, last: int, step: int,
                       n_slices: int) -> Tuple[Optional[int], StopReason]:
    """Propagate beyond the outermost seed on one side; returns (first slice not written, reason)."""
    reason: Optional[StopReason]
    if run.config.direction not in ("both", side):
        reached, reason = seed, StopReason.NOT_REQUESTED
    elif seed not in run.masks:  # an empty seed: the stop slice itself is not part of the result
        reached, reason = seed - step, StopReason.STOP_SEED
    else:
        reached, reason = run.chain(seed, last, step, run.config.iou_threshold)
    next_index = reached + step
    inside = 0 <= next_index < n_slices
    if reason is None:
        first, last = _get_bounds(run.config, n_slices)
        reason = (StopReason.BORDER if not inside else StopReason.MAX_SLICES if first <= next_index <= last
                  else StopReason.RANGE_END)
    return (next_index if inside else None), reason


def _fill_gap(run: _Run, lower: int, upper: int) -> None:
    """Segment the slices strictly between two seeds from both ends toward the middle."""
    has_lower, has_upper = lower in run.masks, upper in run.masks
    if has_lower and not has_upper:  # the upper seed is a stop annotation: come from below only
        run.chain(lower, upper - 1, 1, None)
    elif has_upper and not has_lower:
        run.chain(upper, lower + 1, -1, None)
    elif has_lower and has_upper:
        middle = (lower + upper) // 2
        even = (upper - lower) % 2 == 0
        run.chain(lower, middle - 1 if even else middle, 1, None)
        run.chain(upper, middle + 1, -1, None)
        if even and not run.cancelled:
            neighbours = [run.masks[i] for i in (middle - 1, middle + 1) if i in run.masks]
            if neighbours:
                mask = run.segment(middle, np.logical_or.reduce(neighbours))
                if mask is not None and mask.any():
                    run.masks[middle] = mask


def propagate_mask(predict: Callable[[int, Prompts], np.ndarray], seeds: Dict[int, np.ndarray], n_slices: int,
                   config: Optional[PropagationConfig] = None,
                   progress: Optional[Callable[[int, int], None]] = None,
                   should_cancel: Optional[Callable[[], bool]] = None) -> PropagationResult:
    """Propagate an object's seed masks through `n_slices` slices along one axis.

    Args:
        predict: `predict(slice_index, prompts) -> 2D bool mask`; called only for slices actually
            reached, so it may compute that slice's embedding lazily.
        seeds: slice index -> 2D mask drawn or accepted by the user. An empty mask is a stop
            annotation: the object does not exist there, and nothing propagates onto or past it.
        n_slices: number of slices along the axis.
        config: mode, IoU threshold, box extension, direction and range limit.
        progress: called as `progress(done, total)` at the start and after each predicted slice, with
            `total` the most slices the run may segment (it does not change when a side stops early),
            and once more at the end with total == done (not after cancellation).
        should_cancel: checked before each slice; when it returns True the run ends, returning
            what was done with `cancelled=True`.

    Returns:
        The masks of the non-empty seeds and accepted slices, and where / why each side stopped.
    """
    config = config or PropagationConfig()
    seeds = _get_seeds(seeds, n_slices)
    ranges = _get_outward_ranges(seeds, n_slices, config)
    indices: List[int] = list(seeds)
    gaps = [(lower, upper) for lower, upper in zip(indices[:-1], indices[1:])
            if seeds[lower].any() or seeds[upper].any()]
    total = sum(upper - lower - 1 for lower, upper in gaps)
    for side, (seed, last, _) in ranges.items():
        if config.direction in ("both", side) and seeds[seed].any():
            total += abs(last - seed)
    run = _Run(predict, config, total, progress, should_cancel)
    run.masks.update({index: mask for index, mask in seeds.items() if mask.any()})
    run.report()

    stopped_at: Dict[str, Optional[int]] = {}
    reasons: Dict[str, StopReason] = {}
    for side, (seed, last, step) in ranges.items():
        stopped_at[side], reasons[side] = _propagate_outward(run, side, seed, last, step, n_slices)
    for lower, upper in gaps:
        _fill_gap(run, lower, upper)
    if not run.cancelled:  # a cancelled run is not complete: its bar should not read 100%
        run.finish()
    return PropagationResult(masks=dict(sorted(run.masks.items())), stopped_at=stopped_at, reasons=reasons,
                             cancelled=run.cancelled)
