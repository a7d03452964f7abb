"""VTK extents and the effect's images: array shapes, array index -> world RAS, and re-gridding.

A `vtkOrientedImageData` is indexed by its extent `[i0, i1, j0, j1, k0, k1]` (inclusive, not starting
at 0 in general) and lives in its segmentation's local frame; the effect's images (source volume,
segment labelmap, modifier) may differ in extent. numpy arrays here are (K, J, I).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np


def get_extent_shape(extent: Sequence[int]) -> Tuple[int, int, int]:
    """(K, J, I) array shape of a VTK extent."""
    return tuple(int(extent[2 * axis + 1]) - int(extent[2 * axis]) + 1 for axis in (2, 1, 0))


def get_world_ijk_to_ras(image_to_local: np.ndarray, extent: Sequence[int],
                         local_to_world: Optional[np.ndarray] = None) -> np.ndarray:
    """4x4 matrix from array indices (i, j, k) of a `vtkOrientedImageData` to world RAS.

    Array index 0 is the image's extent start, not IJK 0, and a segmentation under a (linear) parent
    transform has its labelmaps in its own local frame: both are folded in here.
    """
    shift = np.eye(4)
    shift[:3, 3] = [extent[0], extent[2], extent[4]]
    to_world = np.eye(4) if local_to_world is None else np.asarray(local_to_world, float)
    return to_world @ np.asarray(image_to_local, float) @ shift


def get_array_on_extent(array: np.ndarray, extent: Sequence[int], target_extent: Sequence[int]) -> np.ndarray:
    """`array` (K, J, I) of an image with VTK `extent`, on the grid of `target_extent` (same geometry):
    clipped where it sticks out, zero where it does not reach (the editor's images may differ in extent).
    """
    target_shape = get_extent_shape(target_extent)
    if target_shape == array.shape and tuple(extent) == tuple(target_extent):
        return array
    out = np.zeros(target_shape, dtype=array.dtype)
    source, target = [], []
    for a in (2, 1, 0):  # VTK extent axis a (i, j, k) is array axis 2 - a
        low = max(int(extent[2 * a]), int(target_extent[2 * a]))
        high = min(int(extent[2 * a + 1]), int(target_extent[2 * a + 1]))
        if high < low:
            return out
        source.append(slice(low - int(extent[2 * a]), high - int(extent[2 * a]) + 1))
        target.append(slice(low - int(target_extent[2 * a]), high - int(target_extent[2 * a]) + 1))
    out[tuple(target)] = array[tuple(source)]
    return out
