"""The Slicer effect's state machine, free of Slicer: prompts per slice, preview, accepted slices,
propagation, and exactly what to write where.

The effect reads MRML (a click in world RAS, the view's normal, the source volume as resampled to the
segmentation geometry), calls a `SegmentationSession`, and writes each `WriteRequest` it gets back:
`saveStateForUndo()` once, then `modifySelectedSegmentByLabelmap` per block, so the Segment Editor's
undo, editable area, intensity range and overwrite rules hold. Every decision in between lives here,
where pytest drives it with a real SAM on real data.

States, per slice (axis, index): prompts placed -> preview shown -> applied (an *accepted* slice, a
propagation seed). `propagate` starts from every accepted slice of the current axis (an unapplied
preview is accepted first, in the same user action), fills the gaps between them from both ends and
writes only the slices it reached. A correction is new prompts on any slice, then Apply, then
Propagate again: the corrected slice becomes one more seed.

A session is not thread-safe: the effect calls it only from its single inference worker thread.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..geometry import get_roi_slice_boxes, get_slice_axis
from ..markups import Markups, MarkupsPoint, get_markup_prompts
from ..prompts import Prompts

SliceKey = Tuple[int, int]  # (array axis, slice index)


@dataclasses.dataclass
class SlicePreview:
    """The predicted mask of the current slice, shown before it is applied."""

    axis: int
    index: int
    mask: np.ndarray  # (H, W) bool, the slice `np.take(volume, index, axis)`
    score: float  # SAM's predicted IoU

    def get_block(self) -> WriteBlock:
        """The preview as a one-slice block (the effect draws it like it writes a slice)."""
        return WriteBlock(self.axis, self.index, self.index + 1, self.mask[None], self.mask[None])


@dataclasses.dataclass
class WriteBlock:
    """Consecutive slices `start..stop-1` along `axis`: inside `covered`, the segment becomes `masks`;
    outside it the segment keeps what it holds (the other kidney of a "kidneys" segment)."""

    axis: int
    start: int
    stop: int
    masks: np.ndarray  # (stop - start, H, W) bool, slice by slice
    covered: np.ndarray  # (stop - start, H, W) bool, holds `masks`: where this write may change the segment

    def get_index(self) -> Tuple[slice, slice, slice]:
        """Index of the block in the (K, J, I) volume array."""
        index = [slice(None)] * 3
        index[self.axis] = slice(self.start, self.stop)
        return tuple(index)

    def get_array(self) -> np.ndarray:
        """The masks laid out like `volume[self.get_index()]`."""
        return np.moveaxis(self.masks, 0, self.axis)

    def get_removed(self, segment: np.ndarray) -> np.ndarray:
        """Voxels of the (K, J, I) `segment` in the block that this write drops, laid out like `get_array()`:
        inside the covered region and not in the new masks. Only these are erased, because with the
        editable area "inside a single segment" Slicer gives erased voxels to the masking segment."""
        return segment[self.get_index()].astype(bool) & np.moveaxis(self.covered, 0, self.axis) & ~self.get_array()

    def get_added(self, segment: np.ndarray) -> np.ndarray:
        """Voxels the new masks add to the (K, J, I) `segment`, laid out like `get_array()`."""
        return self.get_array() & ~segment[self.get_index()].astype(bool)

    def get_extent(self, shape_kji: Sequence[int], origin_ijk: Sequence[int] = (0, 0, 0)) -> List[int]:
        """VTK extent `[i0, i1, j0, j1, k0, k1]` (inclusive) of the block; `origin_ijk` is the image's
        extent start, since a `vtkOrientedImageData` extent need not begin at 0."""
        low = [0, 0, 0]
        high = [int(n) - 1 for n in shape_kji]
        low[self.axis], high[self.axis] = self.start, self.stop - 1
        extent: List[int] = []
        for array_axis, origin in zip((2, 1, 0), origin_ijk):
            extent += [low[array_axis] + int(origin), high[array_axis] + int(origin)]
        return extent


@dataclasses.dataclass
class WriteRequest:
    """One user action's change to the selected segment: on each listed slice, inside the region the
    action covers, the segment becomes the slice's mask; everything else is left as it is.

    The covered region of a slice is its new mask, the mask this session wrote there before (so a
    correction removes what the earlier result leaked into) and the slice's box prompt (an ROI's box
    per slice in "Segment in ROI"). One request is one undo point: when it changes the segment
    (`changes`), the effect calls `saveStateForUndo()` once, then, per block, removes `get_removed`
    and adds the masks, both through `modifySelectedSegmentByLabelmap`.

    Attributes:
        action: "apply", "segment_roi" or "propagate".
        axis: array axis the slices are taken along.
        masks: slice index -> (H, W) bool mask.
        shape: (K, J, I) shape of the volume.
        result: the propagation result (where and why each side stopped), for "propagate".
        covered: slice index -> (H, W) bool region the action covers (the mask is added to it).
    """

    action: str
    axis: int
    masks: Dict[int, np.ndarray]
    shape: Tuple[int, int, int]
    result: Optional[object] = None  # propagation.PropagationResult
    covered: Dict[int, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.covered = {index: mask | self.covered[index] if index in self.covered else mask.copy()
                        for index, mask in self.masks.items()}

    @property
    def slices(self) -> List[int]:
        return sorted(self.masks)

    def get_blocks(self) -> List[WriteBlock]:
        """The slices grouped into runs of consecutive indices (one modification call each)."""
        blocks: List[WriteBlock] = []
        run: List[int] = []
        for index in self.slices:
            if run and index != run[-1] + 1:
                blocks.append(self._get_block(run))
                run = []
            run.append(index)
        if run:
            blocks.append(self._get_block(run))
        return blocks

    def changes(self, segment: np.ndarray) -> bool:
        """Whether writing the request changes the (K, J, I) `segment`: no undo point, no write otherwise."""
        self._check_shape(segment)
        return any(block.get_removed(segment).any() or block.get_added(segment).any() for block in self.get_blocks())

    def describe(self) -> str:
        """One line for the effect's status: what was written and, after propagation, why it stopped."""
        if not self.masks:
            return "Nothing was written: the object was not found beyond the applied slices."
        first, last = self.slices[0], self.slices[-1]
        where = f"slice {first}" if first == last else f"{len(self.masks)} slices between {first} and {last}"
        text = f"Wrote {where}."
        if self.result is not None:
            text += f" Stopped {self.result.describe_stops()}."
        return text

    def apply_to(self, segment: np.ndarray) -> None:
        """Do to a (K, J, I) bool array what the effect does to the segment (before masking rules)."""
        self._check_shape(segment)
        for block in self.get_blocks():
            removed = block.get_removed(segment)
            segment[block.get_index()] = (segment[block.get_index()] & ~removed) | block.get_array()

    def _check_shape(self, segment: np.ndarray) -> None:
        if tuple(segment.shape) != tuple(self.shape):
            raise InputError(f"segment shape {segment.shape} differs from the volume shape {self.shape}")

    def _get_block(self, run: List[int]) -> WriteBlock:
        return WriteBlock(self.axis, run[0], run[-1] + 1, np.stack([self.masks[i] for i in run]),
                          np.stack([self.covered[i] for i in run]))


def _same(a: Optional[Prompts], b: Optional[Prompts]) -> bool:
    """Whether two slices' stored prompts are equal (None: no prompt)."""
    if a is None or b is None:
        return a is b
    return (np.array_equal(a.points, b.points) and np.array_equal(a.labels, b.labels)
            and _same_array(a.box, b.box) and _same_array(a.mask, b.mask))


def _same_array(a: Optional[np.ndarray], b: Optional[np.ndarray]) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def _is_addition(before: Prompts, after: Prompts) -> bool:
    """True when `after` only adds points to `before` (same box and mask, earlier points unchanged)."""
    n = len(before.points)
    return (_same_array(before.box, after.box) and _same_array(before.mask, after.mask) and len(after.points) > n
            and np.array_equal(after.points[:n], before.points) and np.array_equal(after.labels[:n], before.labels))


class SegmentationSession:
    """Interactive SAM segmentation of one segment in one volume.

    Args:
        predictor: a `medicosam.predictor.VolumePredictor` on the (K, J, I) source array.
        ijk_to_ras: 4x4 matrix from array indices (i, j, k) to world RAS (see `extent.get_world_ijk_to_ras`).
        refine: feed the slice's previous prediction (or the mask last written there) to SAM with
            every new prompt, so corrections refine the mask instead of starting over.
    """

    def __init__(self, predictor, ijk_to_ras: np.ndarray, refine: bool = True):
        self.predictor = predictor
        self.ijk_to_ras = np.asarray(ijk_to_ras, float)
        if self.ijk_to_ras.shape != (4, 4):
            raise InputError(f"ijk_to_ras must be a 4x4 matrix, got shape {self.ijk_to_ras.shape}")
        self.shape: Tuple[int, int, int] = tuple(int(n) for n in predictor.volume.shape)
        self.refine = refine
        self.current: Optional[SliceKey] = None
        self.preview: Optional[SlicePreview] = None
        self.markups = Markups()  # the markups last given (`set_markups`)
        self._prompts: Dict[SliceKey, Prompts] = {}  # placed by `markups.get_markup_prompts`
        self._logits: Dict[SliceKey, np.ndarray] = {}  # last low-res prediction per slice
        self._written: Dict[SliceKey, np.ndarray] = {}  # last mask this session wrote per slice
        self._accepted: Dict[int, Dict[int, np.ndarray]] = {}  # axis -> slice -> mask the user applied
        self._pending = False  # the current slice has prompts that are not applied yet

    # Prompts -------------------------------------------------------------------------------------

    def add_point(self, point_ras: Sequence[float], positive: bool, view_normal_ras: Sequence[float]) -> SliceKey:
        """Add a +/- point clicked in a view with the given normal to the session's markups; returns the
        slice it landed on.

        Raises:
            InputError: the view is not aligned with the volume's slices.
            PointOutsideVolumeError: the point is outside the volume.
        """
        point = MarkupsPoint(tuple(float(v) for v in point_ras), positive)
        self.set_markups(self.markups + Markups(points=(point,)), view_normal_ras)
        return self.current

    def set_markups(self, markups: Markups, view_normal_ras: Sequence[float]) -> List[SliceKey]:
        """Make markups the prompts of the view's slices: the effect calls this whenever a point list, ROI
        or curve changes (by any module), with world positions (`markups.Markups`).

        Slices whose prompts did not change keep their preview and previous prediction; a slice whose
        points were only added to keeps its previous prediction (a correction); any other change starts
        that slice afresh. The last changed slice becomes the current one. Returns the changed slices.
        Markups that cannot be placed (a point outside the volume...) raise and change nothing.
        """
        axis = get_slice_axis(view_normal_ras, self.ijk_to_ras)
        wanted = {(axis, index): prompts
                  for index, prompts in get_markup_prompts(markups, self.ijk_to_ras, self.shape, axis).items()}
        self.markups = markups
        old = {key: value for key, value in self._prompts.items() if key[0] == axis}
        changed = sorted(key for key in set(old) | set(wanted) if not _same(old.get(key), wanted.get(key)))
        for key in changed:
            before, after = old.get(key), wanted.get(key)
            if after is None:
                self._prompts.pop(key, None)
            else:
                self._prompts[key] = after
            if before is None or after is None or not _is_addition(before, after):
                self._logits.pop(key, None)
            if key == self.current:
                self.preview = None
                self._pending = after is not None
        added = [key for key in changed if key in wanted]
        if added and self.current not in added:
            self.current, self.preview, self._pending = added[-1], None, True
        return changed

    def segment_in_roi(self, roi, markups: Optional[Markups] = None, view_normal_ras: Sequence[float] = (0.0, 0.0, 1.0),
                       progress: Optional[Callable[[int, int], None]] = None,
                       should_cancel: Optional[Callable[[], bool]] = None) -> Optional[WriteRequest]:
        """"Segment in ROI": the ROI's box on every slice it covers (plus the points and curves of `markups`
        on each of those slices), predicted slice by slice and written as one request (one undo point);
        None if cancelled.
        The ROI bounds the write: each slice's mask is kept inside the ROI's box there, and the segment
        outside the boxes is left as it is. Every slice is accepted, so Propagate and corrections
        continue from the result."""
        markups = markups or Markups()
        axis = get_slice_axis(view_normal_ras, self.ijk_to_ras)
        inside = get_roi_slice_boxes(roi.get_corners_ras(), self.ijk_to_ras, self.shape, axis)
        slice_prompts = get_markup_prompts(Markups(markups.points, (roi,), markups.curves), self.ijk_to_ras,
                                           self.shape, axis, every_roi_slice=True)
        slice_prompts = {index: prompts for index, prompts in slice_prompts.items() if index in inside}
        masks: Dict[int, np.ndarray] = {}
        covered: Dict[int, np.ndarray] = {}
        for done, (index, prompts) in enumerate(sorted(slice_prompts.items())):
            if should_cancel is not None and should_cancel():
                return None
            mask = self.predictor.predict_mask(axis, index, prompts)
            covered[index] = _get_box_mask(prompts.box, mask.shape)
            masks[index] = mask & covered[index]
            if progress is not None:
                progress(done + 1, len(slice_prompts))
        for index, mask in masks.items():
            self._accepted.setdefault(axis, {})[index] = mask
            self._written[(axis, index)] = mask
        self.preview, self._pending = None, False
        return WriteRequest("segment_roi", axis, masks, self.shape, covered=covered)

    def clear_prompts(self) -> None:
        """Forget the current slice's prompts, preview and previous prediction (applied masks stay)."""
        if self.current is not None:
            self._prompts.pop(self.current, None)
            self._logits.pop(self.current, None)
        self.preview = None
        self._pending = False

    def has_prompts(self, key: Optional[SliceKey] = None) -> bool:
        """Whether a slice (the current one by default) has prompts: markups may have left it none."""
        key = key or self.current
        return key is not None and key in self._prompts

    def get_prompts(self, key: Optional[SliceKey] = None) -> Prompts:
        """SAM prompts of a slice (the current one by default), with the refinement input if enabled
        (a lasso's mask is the user's own mask prompt: it is never replaced)."""
        key = key or self._get_current()
        if key not in self._prompts:
            raise InputError("no prompt on this slice: click a point or drag a box on it first")
        prompts = self._prompts[key]
        if not self.refine or prompts.mask is not None:
            return prompts
        if key in self._logits:
            return dataclasses.replace(prompts, logits=self._logits[key])
        if key in self._written and self._written[key].any():
            return dataclasses.replace(prompts, mask=self._written[key])
        return prompts

    # Prediction and writing ----------------------------------------------------------------------

    def update_preview(self) -> SlicePreview:
        """Predict the current slice from its prompts (runs the encoder once per slice, then cached)."""
        axis, index = key = self._get_current()
        prediction = self.predictor.predict(axis, index, self.get_prompts(key))
        self._logits[key] = prediction.logits[0]
        self.preview = SlicePreview(axis, index, prediction.masks[0], float(prediction.scores[0]))
        return self.preview

    def apply(self) -> WriteRequest:
        """Accept the current slice's prediction: the slice becomes a propagation seed."""
        preview = self._get_pending_preview()
        if preview is None:
            raise InputError("nothing to apply: click a point or drag a box on a slice first")
        key = (preview.axis, preview.index)
        covered = self._get_covered(key, preview.mask, self._get_box(key))
        self._accept(preview)
        return WriteRequest("apply", preview.axis, {preview.index: preview.mask}, self.shape,
                            covered={preview.index: covered})

    def propagate(self, config=None, segment: Optional[np.ndarray] = None,
                  progress: Optional[Callable[[int, int], None]] = None,
                  should_cancel: Optional[Callable[[], bool]] = None) -> Optional[WriteRequest]:
        """Propagate from every accepted slice of the current axis; None when cancelled (nothing changes).

        Args:
            config: a `medicosam.propagation.PropagationConfig` (direction, range, mode, IoU stop).
            segment: the selected segment now, as a (K, J, I) bool array on the volume grid. Seeds are
                read from it (`get_seeds`), so Undo and edits made with other effects count; an accepted
                slice that is now empty (undone or erased) is no longer a seed. None: the masks as applied.
            progress: `progress(done, total)` after each slice.
            should_cancel: checked before each slice.
        """
        preview = self._get_pending_preview()
        axis = preview.axis if preview is not None else self._get_propagation_axis()
        accepted = dict(self._accepted.get(axis, {}))
        if segment is not None and tuple(segment.shape) != self.shape:
            raise InputError(f"segment shape {segment.shape} differs from the volume shape {self.shape}")
        seeds = get_seeds(axis, accepted, segment)
        if preview is not None:
            seeds[preview.index] = preview.mask
        if not any(mask.any() for mask in seeds.values()):
            raise InputError("nothing to propagate: apply a non-empty mask on at least one slice first")
        result = self.predictor.propagate(axis, seeds, config, progress, should_cancel)
        if result.cancelled:
            return None
        forgotten = set(accepted) - set(seeds)
        self._accepted[axis] = {i: m for i, m in accepted.items() if i not in forgotten}
        if preview is not None:
            self._accept(preview)
        masks = {index: mask for index, mask in result.masks.items()
                 if index not in seeds or (preview is not None and index == preview.index)}
        covered = {index: self._get_covered((axis, index), mask, self._get_box((axis, index))
                                            if preview is not None and index == preview.index else None)
                   for index, mask in masks.items()}
        for index, mask in masks.items():
            self._written[(axis, index)] = mask
            if preview is None or index != preview.index:  # a prediction made there before is stale now:
                self._logits.pop((axis, index), None)  # the next prompt there refines the written mask
        return WriteRequest("propagate", axis, masks, self.shape, result, covered)

    def get_accepted_slices(self, axis: int) -> List[int]:
        return sorted(self._accepted.get(axis, {}))

    def get_prefetch_slices(self, radius: int = 2) -> List[SliceKey]:
        """Neighbours of the current slice, nearest first: their embeddings are worth computing while
        the user looks at the preview (the next click or the propagation will need them)."""
        if self.current is None:
            return []
        axis, index = self.current
        neighbours = [index + sign * step for step in range(1, radius + 1) for sign in (1, -1)]
        return [(axis, i) for i in neighbours if 0 <= i < self.shape[axis]]

    # Internals -----------------------------------------------------------------------------------

    def _get_current(self) -> SliceKey:
        if self.current is None:
            raise InputError("no slice selected yet: click a point or drag a box on a slice first")
        return self.current

    def _get_pending_preview(self) -> Optional[SlicePreview]:
        """The current slice's preview if its prompts are not applied yet (predicted now if stale)."""
        if not self._pending or self.current is None or self.current not in self._prompts:
            return None
        if self.preview is None or (self.preview.axis, self.preview.index) != self.current:
            return self.update_preview()
        return self.preview

    def _accept(self, preview: SlicePreview) -> None:
        key = (preview.axis, preview.index)
        self._accepted.setdefault(preview.axis, {})[preview.index] = preview.mask
        self._written[key] = preview.mask
        self.preview = None
        self._pending = False

    def _get_propagation_axis(self) -> int:
        if self.current is not None and self._accepted.get(self.current[0]):
            return self.current[0]
        axes = [axis for axis, slices in self._accepted.items() if slices]
        if len(axes) != 1:
            raise InputError("nothing to propagate: apply a mask on a slice first, then propagate "
                               "along that slice's view" if not axes else
                               "slices were applied in several view orientations: click in the view "
                               "whose slices you want to propagate, then propagate")
        return axes[0]

    def _get_box(self, key: SliceKey):
        """The box prompt of slice `key`, if it has one."""
        return self._prompts[key].box if key in self._prompts else None

    def _get_covered(self, key: SliceKey, mask: np.ndarray, box=None) -> np.ndarray:
        """The region a write of `mask` on slice `key` covers: the mask, what this session wrote there
        before, and the box prompt it was predicted from (`box`, `(x0, y0, x1, y1)`)."""
        covered = mask.copy()
        if key in self._written:
            covered |= self._written[key]
        if box is not None:
            covered |= _get_box_mask(box, mask.shape)
        return covered

def _get_box_mask(box, shape: Sequence[int]) -> np.ndarray:
    """(H, W) bool of the pixels inside box `(x0, y0, x1, y1)` (exclusive max)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    mask = np.zeros(tuple(shape), bool)
    mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    return mask


def _get_touching_parts(mask: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The connected parts (8-connected) of `mask` that overlap `reference`: grown from the overlap one
    ring at a time (numpy only: with "Run on: server" the effect has no scipy to rely on)."""
    grown = mask & reference
    while True:
        ring = grown.copy()
        ring[1:] |= grown[:-1]
        ring[:-1] |= grown[1:]
        ring[:, 1:] |= ring[:, :-1].copy()
        ring[:, :-1] |= ring[:, 1:].copy()
        ring &= mask
        if np.array_equal(ring, grown):
            return grown
        grown = ring


def get_seeds(axis: int, accepted: Dict[int, np.ndarray], segment: Optional[np.ndarray]) -> Dict[int, np.ndarray]:
    """Propagation seeds: on each accepted slice (index -> the mask applied there), the parts of the
    (K, J, I) `segment` there that touch what was applied (edits of the object count, other objects
    of the segment on that slice do not). An empty applied mask stays an empty seed (a stop
    annotation); an applied non-empty mask that is gone now was undone or erased: no seed. Without a
    `segment`, the masks as applied."""
    if segment is None:
        return dict(accepted)
    seeds = {}
    for index, applied in accepted.items():
        now = _get_touching_parts(np.take(segment, index, axis=axis).astype(bool), applied)
        if now.any() or not applied.any():
            seeds[index] = now
    return seeds
