"""Helpers for the session tests: an oblique, anisotropic voxel grid and a record of segment writes.

Slicer cannot run here, so `SegmentRecord` plays the Segment Editor's part for write requests: it
applies them to a numpy segment exactly as `WriteRequest.apply_to` documents (the effect does the same
with `modifySelectedSegmentByLabelmap`), keeps one undo snapshot per request that changes the segment
and can undo.
"""

from __future__ import annotations

from typing import List, Sequence

import numpy as np

from medicosam.geometry import ijk_to_ras


def get_rotation(angles_deg: Sequence[float]) -> np.ndarray:
    """3x3 rotation about x, then y, then z by the given angles (degrees)."""
    ax, ay, az = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def get_rotated_ijk_to_ras(spacing=(0.7, 1.3, 2.9), angles_deg=(25.0, -35.0, 50.0),
                           origin=(-40.0, 18.0, 7.5)) -> np.ndarray:
    """IJK -> RAS of a grid rotated about all three axes with three different (i, j, k) spacings."""
    matrix = np.eye(4)
    matrix[:3, :3] = get_rotation(angles_deg) @ np.diag(spacing)
    matrix[:3, 3] = origin
    return matrix


def get_voxel_ras(index_kji: Sequence[int], ijk_to_ras_matrix: np.ndarray,
                  offset_ijk: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """World RAS of array voxel (k, j, i), moved by `offset_ijk` voxels (< 0.5 stays in the voxel)."""
    ijk = np.asarray(index_kji, float)[::-1] + np.asarray(offset_ijk, float)
    return ijk_to_ras(ijk, ijk_to_ras_matrix)


def get_view_normal(ijk_to_ras_matrix: np.ndarray, axis: int, flip: bool = False) -> np.ndarray:
    """Normal of a slice view showing the slices along array `axis` (what Slicer's SliceToRAS gives)."""
    column = ijk_to_ras_matrix[:3, 2 - axis]
    normal = column / np.linalg.norm(column)
    return -normal if flip else normal


def get_test_volume(icbm152) -> np.ndarray:
    """A real T1 crop (K, J, I) = (36, 80, 70): non-square slices along every axis, fast to encode."""
    return icbm152["t1"][30:66, 20:100, 15:85]


class SegmentRecord:
    """The selected segment as the effect would leave it, with one undo point per write request."""

    def __init__(self, shape: Sequence[int]):
        self.segment = np.zeros(tuple(shape), bool)
        self.undo_stack: List[np.ndarray] = []
        self.requests: list = []

    def write(self, request) -> None:
        """As the effect writes: no undo point and no write for a request that changes nothing."""
        if request is None or not request.changes(self.segment):
            return
        self.undo_stack.append(self.segment.copy())  # saveStateForUndo, once per request
        self.requests.append(request)
        request.apply_to(self.segment)

    def undo(self) -> None:
        self.segment = self.undo_stack.pop()
