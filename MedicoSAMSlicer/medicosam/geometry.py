"""Voxel <-> world geometry: IJK <-> RAS, SimpleITK's LPS geometry, slice axes and 2D slice coordinates.

Conventions (docs/architecture.md): world coordinates are RAS (Slicer), IJK indices are (i, j, k) and
numpy arrays are indexed [k, j, i]. SimpleITK stores LPS geometry; it is flipped to RAS once, in
`get_ijk_to_ras`, and nowhere else.

Oblique views are refused, not resampled: SAM embeddings are computed and cached per stored slice of the
volume, so a prompt must land on one of those slices. Resampling an oblique plane would need a fresh
embedding for every view change and would have to interpolate the mask back onto the voxel grid.
"""

from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import numpy as np

from .errors import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
DEFAULT_OBLIQUE_TOLERANCE_DEG = 1.0
_AXIS_NAMES = ("K", "J", "I")

Index = Tuple[int, int, int]
Box = Tuple[int, int, int, int]


class PointOutsideVolumeError(InputError):
    """A world point does not fall inside any voxel of the volume."""


def get_ijk_to_ras(
    origin_lps: Sequence[float], spacing: Sequence[float], direction: Sequence[float]
) -> np.ndarray:
    """4x4 IJK -> RAS matrix from SimpleITK geometry (LPS origin, (i, j, k) spacing, row-major direction).

    SimpleITK maps a continuous index to LPS as `origin + direction @ diag(spacing) @ ijk`; flipping L and P
    gives RAS, the frame Slicer's IJKToRAS matrix uses.
    """
    matrix = np.eye(4)
    matrix[:3, :3] = (
        LPS_TO_RAS @ np.asarray(direction, float).reshape(3, 3) @ np.diag(np.asarray(spacing, float))
    )
    matrix[:3, 3] = LPS_TO_RAS @ np.asarray(origin_lps, float)
    return matrix


def get_ijk_to_ras_from_sitk(image) -> np.ndarray:
    """4x4 IJK -> RAS matrix of a 3D `SimpleITK.Image`."""
    if image.GetDimension() != 3:
        raise InputError(f"expected a 3D SimpleITK image, got {image.GetDimension()}D")
    return get_ijk_to_ras(image.GetOrigin(), image.GetSpacing(), image.GetDirection())


def get_ijk_to_lps(ijk_to_ras: np.ndarray) -> np.ndarray:
    """4x4 IJK -> LPS matrix (what NRRD and DICOM files store) of a 4x4 IJK -> RAS matrix."""
    flip = np.eye(4)
    flip[:3, :3] = LPS_TO_RAS  # its own inverse
    return flip @ np.asarray(ijk_to_ras, float)


def ijk_to_ras(points_ijk: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray:
    """RAS (mm) of continuous IJK indices; `points_ijk` is (3,) or (N, 3), the result has the same shape."""
    points = np.asarray(points_ijk, float)
    return points @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]


def ras_to_ijk(points_ras: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray:
    """Continuous IJK indices of RAS points; `points_ras` is (3,) or (N, 3), the result has the same shape."""
    ras_to_ijk_matrix = np.linalg.inv(ijk_to_ras)
    points = np.asarray(points_ras, float)
    return points @ ras_to_ijk_matrix[:3, :3].T + ras_to_ijk_matrix[:3, 3]


def _round_half_up(values: np.ndarray) -> np.ndarray:
    """Nearest voxel index; halves go up like ITK's TransformPhysicalPointToIndex (np.rint rounds to even)."""
    return np.floor(np.asarray(values, float) + 0.5).astype(int)


def _describe_extent(matrix: np.ndarray, shape_kji: Sequence[int]) -> str:
    """Voxel counts and the RAS bounding box of the voxel grid (outer voxel faces), for error messages."""
    n_k, n_j, n_i = (int(n) for n in shape_kji[:3])
    faces = [(-0.5, n - 0.5) for n in (n_i, n_j, n_k)]
    corners = np.array([[i, j, k] for i in faces[0] for j in faces[1] for k in faces[2]])
    ras = ijk_to_ras(corners, matrix)
    ranges = ", ".join(f"{n} {lo:.1f}..{hi:.1f}" for n, lo, hi in zip("RAS", ras.min(0), ras.max(0)))
    return f"{n_i} x {n_j} x {n_k} voxels (IJK), spanning RAS {ranges} mm"


def ras_to_array_index(point_ras: Sequence[float], ijk_to_ras: np.ndarray, shape_kji: Sequence[int]) -> Index:
    """Array index (k, j, i) of the voxel containing a RAS point (nearest voxel centre).

    Raises:
        PointOutsideVolumeError: the point is outside the volume; the message gives the volume's extent.
    """
    point = np.asarray(point_ras, float).reshape(3)
    ijk = ras_to_ijk(point, ijk_to_ras)
    index_ijk = _round_half_up(np.nan_to_num(ijk, nan=-1.0))
    sizes_ijk = np.asarray(shape_kji[:3])[::-1]
    if not np.all(np.isfinite(ijk)) or np.any(index_ijk < 0) or np.any(index_ijk >= sizes_ijk):
        raise PointOutsideVolumeError(
            f"The point at RAS ({point[0]:.1f}, {point[1]:.1f}, {point[2]:.1f}) mm is outside the volume: "
            f"it falls at IJK ({ijk[0]:.1f}, {ijk[1]:.1f}, {ijk[2]:.1f}) but the volume has "
            f"{_describe_extent(ijk_to_ras, shape_kji)}. Place the point inside the volume."
        )
    return tuple(int(v) for v in index_ijk[::-1])


def get_slice_axis(
    view_normal_ras: Sequence[float],
    ijk_to_ras: np.ndarray,
    tolerance_deg: float = DEFAULT_OBLIQUE_TOLERANCE_DEG,
) -> int:
    """Array axis (0 = K, 1 = J, 2 = I) whose voxel direction is parallel to a slice view's normal.

    Each IJK axis is tested on its own, so flipped, permuted, rotated and sheared grids all work; the sign
    of the normal does not matter.

    Raises:
        InputError: no volume axis is within `tolerance_deg` of the normal.
    """
    normal = np.asarray(view_normal_ras, float).reshape(3)
    norm = np.linalg.norm(normal)
    if not np.isfinite(norm) or norm == 0:
        raise InputError(f"the view normal must be a non-zero vector, got {tuple(normal)}")
    axes_ras = ijk_to_ras[:3, :3] / np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    cosines = np.clip(np.abs(axes_ras.T @ (normal / norm)), 0.0, 1.0)
    best_ijk = int(np.argmax(cosines))
    angle = math.degrees(math.acos(cosines[best_ijk]))
    array_axis = 2 - best_ijk
    if angle > tolerance_deg:
        raise InputError(
            f"The slice view is oblique to the volume's voxel grid: its normal is {angle:.1f} degrees "
            f"from the closest volume axis ({_AXIS_NAMES[array_axis]}), more than the {tolerance_deg:g} "
            "degree tolerance. MedicoSAM segments the volume's stored slices, so the view must show one "
            "of them: in Slicer open the slice view's pin menu and click 'Rotate to volume plane' (or "
            "choose Axial/Sagittal/Coronal if the volume is not rotated)."
        )
    return array_axis


def _get_plane_axes(axis: int) -> Tuple[int, int]:
    """(row axis, column axis) of the slice along `axis`: the two other array axes, in order."""
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0 (K), 1 (J) or 2 (I), got {axis!r}")
    row_axis, col_axis = (a for a in (0, 1, 2) if a != axis)
    return row_axis, col_axis


def get_slice_point(index_kji: Sequence[int], axis: int) -> Tuple[int, int, int]:
    """(slice_index, x, y) of voxel (k, j, i) on the slice `np.take(volume, slice_index, axis)`."""
    row_axis, col_axis = _get_plane_axes(axis)
    return int(index_kji[axis]), int(index_kji[col_axis]), int(index_kji[row_axis])


def get_voxel_index(slice_index: int, x: int, y: int, axis: int) -> Index:
    """(k, j, i) of pixel (x, y) on slice `slice_index` along `axis`; inverse of `get_slice_point`."""
    row_axis, col_axis = _get_plane_axes(axis)
    index = [0, 0, 0]
    index[axis], index[row_axis], index[col_axis] = int(slice_index), int(y), int(x)
    return tuple(index)


def get_roi_slice_boxes(corners_ras: np.ndarray, ijk_to_ras: np.ndarray, shape_kji: Sequence[int],
                        axis: int) -> Dict[int, Box]:
    """Box `(x0, y0, x1, y1)` per slice index along `axis` of a 3D box given by its RAS corners.

    The box may be rotated against the voxel grid. Its slices are those its extent along `axis` rounds to
    (a box thinner than a voxel still gets the slice it lies in), clipped to the volume. On each slice the
    box prompt is the pixel rectangle around the box's cross-section with the slice plane (the plane
    through the slice's voxel centres, moved to the box's end where the box ends inside that voxel layer),
    corners rounded to the voxel they fall in (halves up) and every pixel between them kept (x1, y1
    exclusive). Slices where that rectangle misses the image are left out.
    """
    corners = ras_to_ijk(np.asarray(corners_ras, float).reshape(-1, 3), ijk_to_ras)[:, ::-1]  # (N, 3) kji
    along = corners[:, axis]
    low, high = along.min(), along.max()
    first = max(int(_round_half_up(low)), 0)
    last = min(int(_round_half_up(high)), int(shape_kji[axis]) - 1)
    row_axis, col_axis = _get_plane_axes(axis)
    pairs = [(a, b) for a in range(len(corners)) for b in range(a, len(corners))]
    boxes: Dict[int, Box] = {}
    for index in range(first, last + 1):
        plane = min(max(float(index), low), high)
        section = []
        for a, b in pairs:  # every vertex pair: the section of the convex box is their sections' hull
            da, db = along[a] - plane, along[b] - plane
            if da == 0 or da * db < 0:
                section.append(corners[a] + (corners[b] - corners[a]) * (da / (da - db) if da != db else 0.0))
        rows_cols = np.asarray(section)[:, [row_axis, col_axis]]
        (y0, x0), (y1, x1) = _round_half_up(rows_cols.min(0)), _round_half_up(rows_cols.max(0))
        box = (max(int(x0), 0), max(int(y0), 0), min(int(x1) + 1, int(shape_kji[col_axis])),
               min(int(y1) + 1, int(shape_kji[row_axis])))
        if box[0] < box[2] and box[1] < box[3]:
            boxes[index] = box
    return boxes
