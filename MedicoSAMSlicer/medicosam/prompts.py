"""Every prompt sampling rule, in one place: training, evaluation, propagation and the Slicer effect.

Conventions (docs/architecture.md): masks are 2D bool arrays of one slice; points are `(x, y)` =
`(column, row)` pixel indices; boxes are `(x0, y0, x1, y1)` with `x1, y1` exclusive. All randomness
comes from a passed `np.random.Generator`, so every sample is reproducible from a seed.

The rules follow micro-sam (the reference MedicoSAM was trained and evaluated with):
random correction clicks from the error regions, outward-only box jitter, distance-transform
centres, and points / boxes / masks projected from a neighbouring slice for propagation.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import numpy as np

from .errors import InputError

#: How `derive_prompts_from_mask` turns a neighbouring slice's mask into prompts.
PROPAGATION_MODES = ("single_point", "points", "box", "box_mask", "points_mask")

#: Where correction clicks go inside an error region: uniformly at random (micro-sam's training and
#: evaluation rule) or at the centre of the largest error component (where a person would click).
CORRECTION_MODES = ("random", "center")

_BBOX_MARGIN = 3  # px around the object where a negative click goes when there is no false positive
_MIN_DISTANCE_INSIDE = 3  # peak_local_max spacing of positive / negative points (micro-sam's values)
_MIN_DISTANCE_OUTSIDE = 5


@dataclasses.dataclass
class Prompts:
    """Prompts for one object on one 2D slice.

    Attributes:
        points: (N, 2) float32 `(x, y)` pixel positions; (0, 2) when there are none.
        labels: (N,) int64, 1 for a positive and 0 for a negative point.
        box: (4,) float32 `(x0, y0, x1, y1)`, exclusive max, or None.
        mask: (H, W) bool full-resolution mask used as SAM's mask prompt, or None.
        logits: (h, w) float32 low-resolution logits of a previous prediction (SAM's mask input), or None.
    """

    points: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2), np.float32))
    labels: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    box: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None
    logits: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.float32).reshape(-1, 2)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.points) != len(self.labels):
            raise InputError(f"{len(self.points)} points but {len(self.labels)} labels: "
                              "give one label per point")
        if not np.isin(self.labels, (0, 1)).all():  # SAM's own -1 (padding) and 2, 3 (box corners) are not points
            raise InputError(f"point labels {sorted(set(self.labels.tolist()) - {0, 1})}: a point's label is 1 "
                             "(positive) or 0 (negative)")
        if self.box is not None:
            self.box = np.asarray(self.box, dtype=np.float32).reshape(4)
        if self.mask is not None:
            self.mask = get_mask(self.mask)
        if self.logits is not None:
            self.logits = np.asarray(self.logits, dtype=np.float32)

    @classmethod
    def empty(cls) -> Prompts:
        """No prompt at all (the start of an interactive session)."""
        return cls()

    def with_points(self, points: np.ndarray, labels: np.ndarray) -> Prompts:
        """A copy with `points` / `labels` appended (a correction click keeps the earlier prompts)."""
        added = Prompts(points=points, labels=labels)
        return dataclasses.replace(self, points=np.concatenate([self.points, added.points]),
                                   labels=np.concatenate([self.labels, added.labels]))


def get_mask(mask: np.ndarray) -> np.ndarray:
    """`mask` as a 2D bool array; raises InputError for any other dimensionality."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"expected a 2D mask of one slice, got shape {mask.shape}: take one slice first")
    return mask.astype(bool, copy=False)


def _get_nonempty_mask(mask: np.ndarray, what: str) -> np.ndarray:
    mask = get_mask(mask)
    if not mask.any():
        raise InputError(f"the {what} is empty: a prompt needs at least one foreground pixel")
    return mask


def _get_xy(row: int, col: int) -> np.ndarray:
    return np.array([col, row], dtype=np.float32)


def sample_point_in_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random pixel of `mask` as (2,) float32 `(x, y)` (micro-sam's random positive click)."""
    flat = np.flatnonzero(_get_nonempty_mask(mask, "mask"))
    row, col = np.unravel_index(flat[rng.integers(len(flat))], mask.shape)
    return _get_xy(row, col)


def get_center_point(mask: np.ndarray) -> np.ndarray:
    """The pixel farthest from the background, (2,) float32 `(x, y)`; always inside the mask.

    The distance transform runs on the zero-padded mask so the image border counts as background
    (objects touching the border get a centre away from it). Ties (plateaus, symmetric shapes) go to
    the maximum closest to the mean of all maxima, then to the first in row-major order, so the
    result is deterministic and central (the middle of a rectangle, not its top-left plateau corner).
    """
    from scipy import ndimage

    mask = _get_nonempty_mask(mask, "mask")
    distances = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    rows, cols = np.nonzero(distances == distances.max())
    offsets = (rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2
    best = int(np.argmin(offsets))  # argmin keeps the first (row-major) of equal offsets
    return _get_xy(rows[best], cols[best])


def get_center_prompt(mask: np.ndarray) -> Prompts:
    """One positive click at `get_center_point`: the first prompt of evaluation and propagation."""
    return Prompts(points=get_center_point(mask)[None], labels=np.ones(1, np.int64))


def _get_exact_box(mask: np.ndarray) -> Tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def get_box(mask: np.ndarray, jitter: float = 0.0, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """The bounding box of `mask`, (4,) float32 `(x0, y0, x1, y1)` with exclusive max.

    With `jitter` f > 0 (training uses 0.025), each edge moves outward by U(0, f) x that side's
    length, rounded and clipped to the image: boxes only grow, as in micro-sam, so the object is
    never cut off. Jitter needs `rng`.
    """
    mask = _get_nonempty_mask(mask, "mask")
    x0, y0, x1, y1 = _get_exact_box(mask)
    if jitter > 0:
        if rng is None:
            raise InputError("box jitter is random: pass rng=np.random.default_rng(seed)")
        height, width = mask.shape
        dx0, dy0, dx1, dy1 = rng.uniform(0, jitter, size=4) * [x1 - x0, y1 - y0, x1 - x0, y1 - y0]
        x0, y0 = max(0, int(round(x0 - dx0))), max(0, int(round(y0 - dy0)))
        x1, y1 = min(width, int(round(x1 + dx1))), min(height, int(round(y1 + dy1)))
    return np.array([x0, y0, x1, y1], dtype=np.float32)


def get_extended_box(mask: np.ndarray, extension: float = 0.0) -> np.ndarray:
    """The bounding box grown on every side: `extension` < 1 is a fraction of the side, >= 1 pixels.

    Propagation uses it because a structure usually grows a little from one slice to the next.
    Clipped to the image and rounded (micro-sam's rule); (4,) float32 xyxy, exclusive max.
    """
    mask = _get_nonempty_mask(mask, "mask")
    if extension < 0:
        raise InputError(f"box extension {extension} is negative: "
                          "use 0 (none), < 1 (a fraction of the side) or >= 1 (pixels)")
    x0, y0, x1, y1 = _get_exact_box(mask)
    if extension >= 1:
        ext_x = ext_y = extension
    else:
        ext_x, ext_y = extension * (x1 - x0), extension * (y1 - y0)
    height, width = mask.shape
    box = [max(x0 - ext_x, 0), max(y0 - ext_y, 0), min(x1 + ext_x, width), min(y1 + ext_y, height)]
    return np.round(box).astype(np.float32)


def get_largest_component(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """The largest connected piece of a 2D / 3D mask (empty for an empty mask).

    `connectivity` as `scipy.ndimage.generate_binary_structure`: 1 = face neighbours, `mask.ndim`
    = also diagonal ones. Of equal sizes, the first in raster order wins, so the result is reproducible.
    """
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, connectivity))
    if n == 0:
        return labels > 0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    return labels == int(np.argmax(sizes)) + 1


def _sample_click(region: np.ndarray, rng: np.random.Generator, mode: str) -> np.ndarray:
    if mode == "random":
        return sample_point_in_mask(region, rng)
    return get_center_point(get_largest_component(region, connectivity=2))


def _get_bbox_ring(target: np.ndarray, margin: int) -> np.ndarray:
    x0, y0, x1, y1 = _get_exact_box(target)
    ring = np.zeros_like(target)
    ring[max(y0 - margin, 0): y1 + margin, max(x0 - margin, 0): x1 + margin] = True
    return ring & ~target


def sample_correction_points(target: np.ndarray, prediction: np.ndarray, rng: np.random.Generator,
                             mode: str = "random") -> Tuple[np.ndarray, np.ndarray]:
    """One positive and one negative correction click for `prediction` against `target`.

    The positive goes into the false negatives (target and not predicted), the negative into the
    false positives (predicted, not target). micro-sam's fallbacks keep the count fixed at 1 + 1:
    without false negatives the positive goes into the correctly predicted object; without false
    positives the negative goes into the target's bounding box grown by 3 px minus the object.

    Args:
        target: 2D ground-truth mask of the object (non-empty, not the whole slice).
        prediction: 2D predicted mask, same shape.
        rng: source of randomness (unused by the deterministic `mode="center"`).
        mode: "random" (uniform pixel of the error region, micro-sam's rule for training and
            evaluation) or "center" (distance-transform centre of the largest connected error
            component, how a person clicks).

    Returns:
        points (2, 2) float32 `(x, y)` rows [positive, negative] and labels int64 [1, 0].
    """
    if mode not in CORRECTION_MODES:
        raise InputError(f"unknown correction mode {mode!r}: use one of {CORRECTION_MODES}")
    target = _get_nonempty_mask(target, "target")
    prediction = get_mask(prediction)
    if prediction.shape != target.shape:
        raise InputError(f"prediction shape {prediction.shape} differs from target shape {target.shape}")
    if target.all():
        raise InputError("the target covers the whole slice: there is no background for a negative click")
    false_negative = target & ~prediction
    positive_region = false_negative if false_negative.any() else target  # no FN: target is all predicted
    false_positive = prediction & ~target
    # The ring is empty only when the target covers the whole slice (rejected above), so micro-sam's
    # last fallback (any background pixel) can never be reached in 2D.
    negative_region = false_positive if false_positive.any() else _get_bbox_ring(target, _BBOX_MARGIN)
    points = np.stack([_sample_click(positive_region, rng, mode), _sample_click(negative_region, rng, mode)])
    return points, np.array([1, 0], dtype=np.int64)


def _get_distance_peaks(mask: np.ndarray, box: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Smoothed inside / outside distance maxima within `box`, as (row, col) arrays.

    Inside: distance to the background (border counts as background); outside: distance to the
    object. Both are computed on the whole slice, then cropped, so the crop edge makes no boundary.
    """
    from scipy import ndimage
    from skimage.feature import peak_local_max

    inside = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    outside = ndimage.distance_transform_edt(~mask)
    x0, y0, x1, y1 = box.astype(int)
    crop = (slice(y0, y1), slice(x0, x1))
    distances = ndimage.gaussian_filter(np.where(mask, inside, outside)[crop], sigma=1.0)
    cropped = mask[crop]
    offset = np.array([y0, x0])
    positives = peak_local_max(np.where(cropped, distances, 0.0), min_distance=_MIN_DISTANCE_INSIDE,
                               exclude_border=False)
    negatives = peak_local_max(np.where(cropped, 0.0, distances), min_distance=_MIN_DISTANCE_OUTSIDE,
                               exclude_border=False)
    return positives.reshape(-1, 2) + offset, negatives.reshape(-1, 2) + offset


def _get_point_prompts(mask: np.ndarray, box_extension: float) -> Tuple[np.ndarray, np.ndarray]:
    positives, negatives = _get_distance_peaks(mask, get_extended_box(mask, box_extension))
    if len(positives) == 0:  # tiny masks: smoothing can flatten every inside peak
        positives = get_center_point(mask)[None, ::-1]
    points = np.concatenate([positives, negatives])[:, ::-1]  # (row, col) -> (x, y)
    labels = np.concatenate([np.ones(len(positives), np.int64), np.zeros(len(negatives), np.int64)])
    return points.astype(np.float32), labels


def derive_prompts_from_mask(mask: np.ndarray, mode: str, box_extension: float = 0.0) -> Prompts:
    """Prompts for the next slice from the mask found on a neighbouring slice (propagation).

    Modes (`PROPAGATION_MODES`):
        "single_point": one positive at the distance-transform centre.
        "points": positives at the local maxima of the smoothed inside distance transform
            (spacing >= 3 px), negatives at the maxima of the outside distance within the extended
            box (spacing >= 5 px); the count varies with the shape (micro-sam's "points").
        "box": the bounding box extended by `box_extension` (< 1: fraction of the side, >= 1: pixels).
        "box_mask": that box plus the mask as mask prompt (micro-sam's "mask").
        "points_mask": the points plus the mask as mask prompt.
    """
    if mode not in PROPAGATION_MODES:
        raise InputError(f"unknown propagation mode {mode!r}: use one of {PROPAGATION_MODES}")
    mask = _get_nonempty_mask(mask, "mask to propagate")
    if mode == "single_point":
        return get_center_prompt(mask)
    if mode in ("points", "points_mask"):
        points, labels = _get_point_prompts(mask, box_extension)
        return Prompts(points=points, labels=labels, mask=mask if mode == "points_mask" else None)
    return Prompts(box=get_extended_box(mask, box_extension), mask=mask if mode == "box_mask" else None)


#: A scribble prompts a point every this many pixels along its stroke (`get_stroke_points`), at most
#: `STROKE_MAX_POINTS` of them: a longer stroke spaces them farther apart.
STROKE_SPACING_PX = 10.0
STROKE_MAX_POINTS = 12


def get_polygon_mask(xy: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the pixels whose centres lie inside the closed polygon `xy` ((N, 2) `(x, y)` in pixels,
    the last vertex joined to the first), by the even-odd rule: a lasso's mask prompt."""
    xy = np.asarray(xy, float).reshape(-1, 2)
    if len(xy) < 3:
        raise InputError(f"a lasso needs at least 3 points, got {len(xy)}: draw a closed contour around the object")
    height, width = shape
    mask = np.zeros((height, width), bool)
    x0, y0 = max(int(np.ceil(xy[:, 0].min())), 0), max(int(np.ceil(xy[:, 1].min())), 0)
    x1, y1 = min(int(np.floor(xy[:, 0].max())), width - 1), min(int(np.floor(xy[:, 1].max())), height - 1)
    if x0 > x1 or y0 > y1:
        return mask
    ys, xs = np.mgrid[y0:y1 + 1, x0:x1 + 1].astype(float)
    inside = np.zeros(ys.shape, bool)
    for (xa, ya), (xb, yb) in zip(xy, np.roll(xy, -1, axis=0)):
        if ya == yb:
            continue  # a horizontal edge never crosses a pixel row
        crosses = ((ya > ys) != (yb > ys)) & (xs < xa + (xb - xa) * (ys - ya) / (yb - ya))
        inside ^= crosses
    mask[y0:y1 + 1, x0:x1 + 1] = inside
    return mask


def get_stroke_points(xy: np.ndarray, shape: Tuple[int, int], spacing: float = STROKE_SPACING_PX,
                      max_points: int = STROKE_MAX_POINTS) -> np.ndarray:
    """Points along a stroke (a scribble), (M, 2) float32 `(x, y)`: its start, its end and points spaced
    evenly between, about `spacing` pixels apart and at most `max_points`; each at the pixel it falls
    in, inside the (H, W) slice, without repeats.

    Raises:
        InputError: the stroke lies outside the slice.
    """
    xy = np.asarray(xy, float).reshape(-1, 2)
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(xy, axis=0).T))])
    count = 1 if arc[-1] == 0 else min(max(int(arc[-1] // spacing) + 1, 2), max_points)
    at = np.linspace(0.0, arc[-1], count)
    sampled = np.stack([np.interp(at, arc, xy[:, 0]), np.interp(at, arc, xy[:, 1])], axis=1)
    pixels = np.floor(sampled + 0.5).astype(int)  # halves go up, as for every click (geometry)
    height, width = shape
    kept = []
    for x, y in pixels:
        if 0 <= x < width and 0 <= y < height and (x, y) not in kept:
            kept.append((int(x), int(y)))
    if not kept:
        raise InputError("the scribble lies outside the image: draw it on the object")
    return np.asarray(kept, np.float32)
