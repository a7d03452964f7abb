"""Slicer markups as SAM prompts: point lists (+/-), ROI boxes and curves (lasso, scribble), from MRML
nodes or `.mrk.json` files.

The one prompt type of the core: every world prompt is a markup, gathered in `Markups`, and
`get_markup_prompts` is the one placement rule that turns them into per-slice `Prompts`. The effect
passes the world (RAS) positions it reads from its markups nodes, `medicosam segment` builds markups
from its `--point` / `--box` options and reads Slicer's files (`read_markups_file`), and both get the
same per-slice prompts.

Which points are negative (a Slicer point list has no sign): every point of a list whose name contains
"negative" (a file has no name field since Slicer 5.0, so its file name counts), and any point whose
label or description starts with "-". Points whose `positionStatus` is not "defined" (still being
placed, or skipped) are ignored.

An ROI is a box with its own axes, which may be rotated against the volume. On each slice the box prompt
is the bounding rectangle, in the slice's pixels, of the ROI's cross-section with that slice
(`geometry.get_roi_slice_boxes`); the slices an ROI covers are those its voxel extent reaches.

A curve is a stroke drawn on one slice (the slice its mean position falls in; its points are projected
onto it). A closed curve (lasso) encloses the object: its slice gets the pixels inside it as a mask
prompt and their bounding box as the box prompt (an ROI's box on that slice wins). An open curve
(scribble) gives points along the stroke (`prompts.get_stroke_points`), negative when its list is
("negative" in its name). A lasso is positive only.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import DataError, InputError
from .geometry import (
    PointOutsideVolumeError,
    get_roi_slice_boxes,
    get_slice_axis,
    get_slice_point,
    ras_to_array_index,
    ras_to_ijk,
)
from .prompts import Prompts, get_box, get_polygon_mask, get_stroke_points

#: The schema Slicer 5.x writes and accepts (`vtkMRMLMarkupsJsonStorageNode`: markups-schema-v1.x.y).
_SCHEMA = re.compile(r".*markups-schema-v1\.[0-9]+\.[0-9]+\.json#*$")
_LPS_FLIP = np.array([-1.0, -1.0, 1.0])
#: The most control points one file may hold: prompts take a few per slice, and far more (200,000 points
#: ran for minutes to 2 GB) is a wrong file, not a prompt.
MAX_CONTROL_POINTS = 1000
_CURVE_TYPES = ("Curve", "ClosedCurve")


@dataclasses.dataclass(frozen=True)
class MarkupsPoint:
    """One control point in world RAS (mm); `positive` is False for a background (negative) point."""

    position_ras: Tuple[float, float, float]
    positive: bool


@dataclasses.dataclass(frozen=True)
class MarkupsROI:
    """A box ROI in world RAS: centre, full edge lengths along its own axes, and those axes as the
    columns of `axes_ras` (3x3, orthonormal: Slicer's ROI object-to-world rotation)."""

    center_ras: Tuple[float, float, float]
    size: Tuple[float, float, float]
    axes_ras: Tuple[Tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

    def get_corners_ras(self) -> np.ndarray:
        """(8, 3) RAS corners of the box."""
        signs = np.array([[a, b, c] for a in (-0.5, 0.5) for b in (-0.5, 0.5) for c in (-0.5, 0.5)])
        axes = np.asarray(self.axes_ras, float)
        return np.asarray(self.center_ras, float) + (signs * np.asarray(self.size, float)) @ axes.T

    def get_matrix(self) -> np.ndarray:
        """4x4 object-to-world matrix (axes and centre), as a Slicer ROI's ObjectToWorldMatrix holds them."""
        matrix = np.eye(4)
        matrix[:3, :3], matrix[:3, 3] = self.axes_ras, self.center_ras
        return matrix


@dataclasses.dataclass(frozen=True)
class MarkupsCurve:
    """A stroke in world RAS (mm): `closed` for a lasso (a closed curve around the object), else a
    scribble (an open curve) whose points are positive or negative."""

    points_ras: Tuple[Tuple[float, float, float], ...]
    closed: bool
    positive: bool = True


@dataclasses.dataclass(frozen=True)
class Markups:
    """Every world prompt of one object: control points, ROIs and curves."""

    points: Tuple[MarkupsPoint, ...] = ()
    rois: Tuple[MarkupsROI, ...] = ()
    curves: Tuple[MarkupsCurve, ...] = ()

    def __post_init__(self) -> None:
        for name in ("points", "rois", "curves"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def __add__(self, other: Markups) -> Markups:
        return Markups(self.points + other.points, self.rois + other.rois, self.curves + other.curves)


def get_roi_from_matrix(object_to_world: np.ndarray, size: Sequence[float]) -> Optional[MarkupsROI]:
    """The ROI of a Slicer ROI node from its `GetObjectToWorldMatrix()` and `GetSize()` (object units).

    A parent transform that scales folds into the matrix's columns: their lengths scale the size, their
    directions are the axes. None for an ROI with an empty edge (one still being placed).

    Raises:
        DataError: a shearing transform, which makes the box no longer a box.
    """
    matrix = np.asarray(object_to_world, float)
    scales = np.linalg.norm(matrix[:3, :3], axis=0)
    size_world = np.asarray(size, float) * scales
    if not np.all(size_world > 0):
        return None
    axes = matrix[:3, :3] / scales
    if not np.allclose(axes.T @ axes, np.eye(3), atol=1e-4):
        raise DataError("the ROI is under a shearing transform: harden the transform on the ROI first")
    return MarkupsROI(tuple(matrix[:3, 3].tolist()), tuple(size_world.tolist()), tuple(map(tuple, axes.tolist())))


def get_roi_from_drag(corner_a_ras: Sequence[float], corner_b_ras: Sequence[float], view_axes_ras: np.ndarray,
                      ijk_to_ras: np.ndarray, shape_kji: Sequence[int]) -> MarkupsROI:
    """The ROI of a box dragged between two corners in a slice view whose axes (x, y, normal) are the
    columns of `view_axes_ras` (the view's SliceToRAS rotation).

    The ROI lies on the slice the drag is on and is half a voxel thick, so it covers that slice only:
    a box drawn on one slice prompts that slice and does not bound propagation.

    Raises:
        InputError: the view is not aligned with the volume's slices.
        PointOutsideVolumeError: the centre of the box is outside the volume.
        InputError: a drag along one view axis only (a line, not a box).
    """
    view = np.asarray(view_axes_ras, float)[:3, :3]
    view = view / np.linalg.norm(view, axis=0)
    axis = get_slice_axis(view[:, 2], ijk_to_ras)
    a, b = np.asarray(corner_a_ras, float), np.asarray(corner_b_ras, float)
    centre_ijk = ras_to_ijk((a + b) / 2, ijk_to_ras).reshape(3)
    centre_ijk[2 - axis] = ras_to_array_index((a + b) / 2, ijk_to_ras, shape_kji)[axis]  # onto the slice
    centre = np.asarray(ijk_to_ras, float)[:3] @ np.append(centre_ijk, 1.0)
    spacing = abs(float(np.asarray(ijk_to_ras, float)[:3, 2 - axis] @ view[:, 2]))
    size = (abs(float((b - a) @ view[:, 0])), abs(float((b - a) @ view[:, 1])), spacing / 2)
    if min(size) < 1e-6:  # mm
        raise InputError("empty box: the drag is a line; drag the box over the structure")
    axes = np.column_stack([view[:, 0], view[:, 1], np.cross(view[:, 0], view[:, 1])])  # right-handed
    return MarkupsROI(tuple(centre.tolist()), size, tuple(map(tuple, axes.tolist())))


def get_roi_from_corners(corner_a_ras: Sequence[float], corner_b_ras: Sequence[float], ijk_to_ras: np.ndarray,
                         shape_kji: Sequence[int], axis: int) -> MarkupsROI:
    """The ROI of a box given by two opposite corners on a slice along `axis` (`segment --box`): a box drag
    in a view with the volume's own in-plane axes (`get_roi_from_drag`), so it prompts the slice its centre
    falls in with the pixels between the corners' pixels."""
    matrix = np.asarray(ijk_to_ras, float)
    row_axis, col_axis = (a for a in (0, 1, 2) if a != axis)
    x = matrix[:3, 2 - col_axis] / np.linalg.norm(matrix[:3, 2 - col_axis])
    y = matrix[:3, 2 - row_axis] - (matrix[:3, 2 - row_axis] @ x) * x  # orthogonal to x even on a sheared grid
    y /= np.linalg.norm(y)
    return get_roi_from_drag(corner_a_ras, corner_b_ras, np.column_stack([x, y, np.cross(x, y)]), ijk_to_ras,
                             shape_kji)


def is_negative_label(text: Optional[str]) -> bool:
    """The rule for one control point: its label or description starts with "-"."""
    return bool(text) and text.strip().startswith("-")


def is_negative_list(name: Optional[str]) -> bool:
    """The rule for a whole point list: its name contains "negative"."""
    return bool(name) and "negative" in name.lower()


def is_negative_point(list_name: Optional[str], label: Optional[str], description: Optional[str]) -> bool:
    """The rule for one control point of a point list: its list's name, or its own label or description."""
    return is_negative_list(list_name) or is_negative_label(label) or is_negative_label(description)


def read_markups_file(path: Union[str, Path]) -> Markups:
    """Points, ROIs and curves of a Slicer Markups JSON file (`.mrk.json`), converted to RAS.

    Raises:
        DataError: not JSON, not Slicer's markups schema, an unsupported markups type, a missing or
            malformed field, a point list without any defined point, a curve with too few points or
            a negative lasso.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:  # deep nesting: recursion
        raise DataError(f"{path}: cannot read it as a Slicer markups file ({error}); save the point "
                               "list or ROI from Slicer as .mrk.json") from None
    if not isinstance(document, dict) or not _SCHEMA.match(str(document.get("@schema", ""))):
        raise DataError(f"{path}: field '@schema' is not Slicer's markups-schema-v1.x; save the "
                               "point list or ROI from Slicer 5 as .mrk.json")
    markups = document.get("markups")
    if not isinstance(markups, list) or not markups:
        raise DataError(f"{path}: field 'markups' holds no markups list")
    count = sum(len(markup["controlPoints"]) for markup in markups
                if isinstance(markup, dict) and isinstance(markup.get("controlPoints"), list))
    if count > MAX_CONTROL_POINTS:
        raise DataError(f"{path}: {count} control points, more than the {MAX_CONTROL_POINTS} a prompt file may hold "
                        "(SAM takes a few points per slice): keep the points that prompt, or split the file")
    points: List[MarkupsPoint] = []
    rois: List[MarkupsROI] = []
    curves: List[MarkupsCurve] = []
    for n, markup in enumerate(markups):
        where = f"{path}: markups[{n}]"
        kind = _get_field(markup, "type", str, where)
        flip = _get_flip(markup, where)
        name = str(markup.get("name") or path.name)
        if kind == "Fiducial":
            points += _read_points(markup, flip, name, where)
        elif kind == "ROI":
            rois.append(_read_roi(markup, flip, where))
        elif kind in _CURVE_TYPES:
            curves.append(_read_curve(markup, flip, name, kind == "ClosedCurve", where))
        else:
            raise DataError(f"{where}: type {kind!r} is not a prompt; use a point list (Fiducial), an ROI, a "
                            "closed curve (lasso) or a curve (scribble)")
    return Markups(points, rois, curves)


def get_markup_prompts(markups: Markups, ijk_to_ras: np.ndarray, shape_kji: Sequence[int], axis: int,
                       every_roi_slice: bool = False) -> Dict[int, Prompts]:
    """Prompts per slice index along `axis` from world markups: the one placement rule.

    Each point goes to the slice it falls on, each curve to the slice its mean position falls on (a
    lasso: a box and a mask prompt; a scribble: points along it). An ROI gives its box on the slice its
    centre falls in and on every slice that holds points or curves; with `every_roi_slice` ("Segment in
    ROI") on every slice it covers.

    Raises:
        PointOutsideVolumeError: a point, a curve's mean position or an ROI centre outside the volume.
        DataError: an ROI that does not reach the volume.
        InputError: two ROIs give a box on the same slice, or a lasso encloses no pixel.
    """
    prompts: Dict[int, Prompts] = {}
    for point in markups.points:
        index, x, y = get_slice_point(ras_to_array_index(point.position_ras, ijk_to_ras, shape_kji), axis)
        prompts[index] = prompts.get(index, Prompts()).with_points(np.array([[x, y]]), np.array([int(point.positive)]))
    for curve in markups.curves:
        index, xy = _get_curve_on_slice(curve, ijk_to_ras, shape_kji, axis)
        plane = tuple(int(n) for a, n in enumerate(shape_kji[:3]) if a != axis)
        before = prompts.get(index, Prompts())
        if curve.closed:
            mask = get_polygon_mask(xy, plane) | (before.mask if before.mask is not None else False)
            if not mask.any():
                raise InputError(f"the lasso on slice {index} along array axis {axis} encloses no pixel centre: "
                                 "draw it around the object")
            prompts[index] = dataclasses.replace(before, mask=mask, box=get_box(mask))
        else:
            stroke = get_stroke_points(xy, plane)
            prompts[index] = before.with_points(stroke, np.full(len(stroke), int(curve.positive)))
    boxed: Dict[int, int] = {}  # slice -> the ROI that gave its box
    for number, roi in enumerate(markups.rois):
        boxes = _get_roi_boxes(roi, ijk_to_ras, shape_kji, axis)
        if not boxes:
            raise DataError(f"the ROI centred at RAS {tuple(round(v, 1) for v in roi.center_ras)} mm does "
                                   "not overlap the volume; move it onto the image")
        if every_roi_slice:
            chosen = list(boxes)
        else:
            centre = ras_to_array_index(roi.center_ras, ijk_to_ras, shape_kji)[axis]
            chosen = [index for index in {centre, *prompts} if index in boxes]
        for index in chosen:
            if index in boxed:
                raise InputError(f"two boxes (ROIs) prompt slice {index} along array axis {axis}: SAM takes one "
                                 "box per slice; give one of them")
            boxed[index] = number
            prompts[index] = dataclasses.replace(prompts.get(index, Prompts()),
                                                 box=np.asarray(boxes[index], np.float32))
    return prompts


def get_roi_slice_range(rois: Sequence[MarkupsROI], ijk_to_ras: np.ndarray, shape_kji: Sequence[int],
                        axis: int) -> Optional[Tuple[int, int]]:
    """(first, last) slice along `axis` that the ROIs cover, to bound propagation; None without ROIs."""
    covered = [index for roi in rois for index in _get_roi_boxes(roi, ijk_to_ras, shape_kji, axis)]
    return (min(covered), max(covered)) if covered else None


def get_markups_on_slice(markups: Markups, ijk_to_ras: np.ndarray, shape_kji: Sequence[int], axis: int,
                         index: int) -> Tuple[List[int], List[int], List[int]]:
    """(indices of the points, of the ROIs, of the curves) that prompt slice `index` alone: the points and
    curves on it and the ROIs that cover no other slice. "Clear prompts" deletes these from the user's
    markups."""
    on_slice, curves = [], []
    for number, point in enumerate(markups.points):
        try:
            if ras_to_array_index(point.position_ras, ijk_to_ras, shape_kji)[axis] == index:
                on_slice.append(number)
        except PointOutsideVolumeError:
            continue
    for number, curve in enumerate(markups.curves):
        try:
            if _get_curve_on_slice(curve, ijk_to_ras, shape_kji, axis)[0] == index:
                curves.append(number)
        except PointOutsideVolumeError:
            continue
    only_here = [number for number, roi in enumerate(markups.rois)
                 if get_roi_slice_range([roi], ijk_to_ras, shape_kji, axis) == (index, index)]
    return on_slice, only_here, curves


def get_propagation_range(rois: Sequence[MarkupsROI], ijk_to_ras: np.ndarray, shape_kji: Sequence[int],
                          axis: int) -> Optional[Tuple[int, int]]:
    """The slices propagation may reach: the ROIs' range when it spans several slices, else None (no
    bound: a box drawn on one slice is a prompt there, not a limit)."""
    covered = get_roi_slice_range(rois, ijk_to_ras, shape_kji, axis)
    return covered if covered is not None and covered[0] < covered[1] else None


def _get_curve_on_slice(curve: MarkupsCurve, ijk_to_ras: np.ndarray, shape_kji: Sequence[int],
                        axis: int) -> Tuple[int, np.ndarray]:
    """(slice index, (N, 2) float `(x, y)` pixel positions) of a curve: the slice its mean position falls
    on, every point projected onto it."""
    positions = np.asarray(curve.points_ras, float).reshape(-1, 3)
    index = ras_to_array_index(positions.mean(axis=0), ijk_to_ras, shape_kji)[axis]
    row_axis, col_axis = (a for a in (0, 1, 2) if a != axis)
    kji = ras_to_ijk(positions, ijk_to_ras).reshape(-1, 3)[:, ::-1]
    return int(index), kji[:, [col_axis, row_axis]]


def _get_roi_boxes(roi: MarkupsROI, ijk_to_ras: np.ndarray, shape_kji: Sequence[int], axis: int) -> Dict[int, tuple]:
    """`geometry.get_roi_slice_boxes` of an ROI that spans the slices' rows and columns; an ROI that does
    not (a point, or a line or flat box seen edge-on) is refused as an empty `--box` is, not a one-pixel box.

    Raises:
        DataError: the ROI has no extent across the slices along `axis`.
    """
    corners = roi.get_corners_ras()
    in_plane = ras_to_ijk(corners, ijk_to_ras)[:, ::-1][:, [a for a in (0, 1, 2) if a != axis]]
    if np.ptp(in_plane, axis=0).min() < 1e-6:  # voxels
        raise DataError(f"the ROI centred at RAS {tuple(round(v, 1) for v in roi.center_ras)} mm, size "
                        f"{tuple(round(v, 3) for v in roi.size)} mm, is empty across the slices along array axis "
                        f"{axis}: an ROI prompt needs a size above 0 mm along the slice's rows and columns, as a "
                        "--box needs a drag; resize the ROI in Slicer")
    return get_roi_slice_boxes(corners, ijk_to_ras, shape_kji, axis)


def _get_field(markup, name: str, kind, where: str):
    value = markup.get(name) if isinstance(markup, dict) else None
    if not isinstance(value, kind):
        raise DataError(f"{where}: field {name!r} is missing or not a {kind.__name__}")
    return value


def _get_vector(value, size: int, where: str) -> np.ndarray:
    try:
        vector = np.asarray(value, float).reshape(size)
    except (TypeError, ValueError):
        vector = np.full(size, np.nan)
    if not np.all(np.isfinite(vector)):
        raise DataError(f"{where} must be {size} finite numbers, got {value!r}")
    return vector


def _get_flip(markup, where: str) -> np.ndarray:
    """Sign flip to RAS: Slicer writes LPS by default (and reads a file without the field as LPS)."""
    system = markup.get("coordinateSystem", "LPS")
    units = markup.get("coordinateUnits", "mm")
    if system not in ("LPS", "RAS"):
        raise DataError(f"{where}: field 'coordinateSystem' is {system!r}; Slicer writes LPS or RAS")
    if units != "mm":
        raise DataError(f"{where}: field 'coordinateUnits' is {units!r}; only mm is supported")
    return _LPS_FLIP if system == "LPS" else np.ones(3)


def _read_points(markup, flip: np.ndarray, list_name: str, where: str) -> List[MarkupsPoint]:
    points = []
    for n, point in enumerate(_get_field(markup, "controlPoints", list, where)):
        if not isinstance(point, dict):
            raise DataError(f"{where}.controlPoints[{n}] is not an object")
        if point.get("positionStatus", "defined") != "defined":
            continue
        position = _get_vector(point.get("position"), 3, f"{where}.controlPoints[{n}].position") * flip
        negative = is_negative_point(list_name, point.get("label"), point.get("description"))
        points.append(MarkupsPoint(tuple(float(v) for v in position), not negative))
    if not points:
        raise DataError(f"{where}: the point list has no defined control point; place points in "
                               "Slicer (or set positionStatus to 'defined')")
    return points


def _read_curve(markup, flip: np.ndarray, list_name: str, closed: bool, where: str) -> MarkupsCurve:
    positions = []
    for n, point in enumerate(_get_field(markup, "controlPoints", list, where)):
        if not isinstance(point, dict):
            raise DataError(f"{where}.controlPoints[{n}] is not an object")
        if point.get("positionStatus", "defined") == "defined":
            position = _get_vector(point.get("position"), 3, f"{where}.controlPoints[{n}].position") * flip
            positions.append(tuple(float(v) for v in position))
    needed = 3 if closed else 1
    if len(positions) < needed:
        raise DataError(f"{where}: the {'closed curve (lasso)' if closed else 'curve (scribble)'} has "
                        f"{len(positions)} defined control points; draw one with at least {needed}")
    negative = is_negative_list(list_name)
    if closed and negative:
        raise DataError(f"{where}: a closed curve (lasso) is a positive prompt, but its name says negative; "
                        "draw the background as a curve (scribble) instead")
    return MarkupsCurve(tuple(positions), closed, not negative)


def _read_roi(markup, flip: np.ndarray, where: str) -> MarkupsROI:
    roi_type = markup.get("roiType", "Box")
    if roi_type != "Box":
        raise DataError(f"{where}: roiType {roi_type!r} is not supported; use a Box ROI")
    if markup.get("insideOut"):
        raise DataError(f"{where}: an inside-out ROI is not a box prompt; clear 'Inside out'")
    center = _get_vector(markup.get("center"), 3, f"{where}.center") * flip
    size = _get_vector(markup.get("size"), 3, f"{where}.size")
    if np.any(size < 0):
        raise DataError(f"{where}.size must not be negative, got {size.tolist()}")
    # Row-major object-to-node rotation; LPS files negate its first two rows (vtkMRMLMarkupsROIJsonStorageNode).
    axes = _get_vector(markup.get("orientation", np.eye(3).ravel().tolist()), 9,
                       f"{where}.orientation").reshape(3, 3) * flip[:, None]
    if not np.allclose(axes.T @ axes, np.eye(3), atol=1e-4):
        raise DataError(f"{where}.orientation is not a rotation matrix")
    return MarkupsROI(tuple(center.tolist()), tuple(size.tolist()), tuple(map(tuple, axes.tolist())))
