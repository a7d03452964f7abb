"""Headless interactive segmentation of a volume file: prompts in, mask file out (`medicosam segment`)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .errors import MedicoSAMError

#: RAS normals of the standard slice views.
VIEW_NORMALS = {"axial": (0.0, 0.0, 1.0), "coronal": (0.0, 1.0, 0.0), "sagittal": (1.0, 0.0, 0.0)}


@dataclasses.dataclass
class SegmentRequest:
    """What `medicosam segment` was asked to do; points are RAS mm unless `ijk`."""

    image: str
    out: str
    model: str
    points: List[Sequence[float]] = dataclasses.field(default_factory=list)
    negative_points: List[Sequence[float]] = dataclasses.field(default_factory=list)
    box: List[Sequence[float]] = dataclasses.field(default_factory=list)
    ijk: bool = False
    view: str = "axial"
    window: str = "auto"
    propagate: bool = False
    mode: str = "single_point"
    stop_iou: float = 0.5
    max_slices: Optional[int] = None
    device: str = "auto"
    offline: Optional[bool] = None
    allow_custom: bool = False
    fast: bool = True  # VolumePredictor.from_loaded's fast path; False: the official fp32 path


@dataclasses.dataclass
class SegmentSummary:
    out: str
    axis: int
    seed_slices: List[int]
    slices: List[int]
    voxels: int
    volume_ml: float

    def __str__(self) -> str:
        extent = f"slices {self.slices[0]}..{self.slices[-1]}" if self.slices else "no slice"
        return (f"wrote {self.out}: {self.voxels} voxels ({self.volume_ml:.2f} mL) on {len(self.slices)} "
                f"slices along array axis {self.axis} ({extent}), prompted on {self.seed_slices}")


def get_prompt_index(point: Sequence[float], volume, ijk: bool) -> tuple:
    """(k, j, i) array index of a prompt point given in RAS mm, or as voxel (i, j, k) when `ijk`."""
    from .geometry import PointOutsideVolumeError, ras_to_array_index

    if not ijk:
        return ras_to_array_index(point, volume.ijk_to_ras, volume.shape_kji)
    index = tuple(int(round(v)) for v in point[::-1])
    if any(not 0 <= v < n for v, n in zip(index, volume.shape_kji)):
        raise PointOutsideVolumeError(f"voxel (i, j, k) = {tuple(point)} is outside the volume of "
                                      f"{volume.shape_kji[::-1]} voxels (i, j, k): place the point inside it")
    return index


def get_slice_prompts(request: SegmentRequest, volume, axis: int) -> Dict[int, object]:
    """Prompts per slice index: points go to the slice they fall on, the box to its centre's slice."""
    from .geometry import get_slice_box, get_slice_point
    from .prompts import Prompts

    prompts: Dict[int, Prompts] = {}
    for points, label in ((request.points, 1), (request.negative_points, 0)):
        for point in points:
            index, x, y = get_slice_point(get_prompt_index(point, volume, request.ijk), axis)
            prompts[index] = prompts.get(index, Prompts()).with_points(np.array([[x, y]]), np.array([label]))
    if request.box:
        if len(request.box) != 2:
            raise MedicoSAMError(f"--box needs exactly two corners (give it twice), got {len(request.box)}")
        corners = request.box
        if request.ijk:
            corners = [volume.ijk_to_ras[:3] @ np.append(np.asarray(c, float), 1.0) for c in corners]
        index, box = get_slice_box(corners[0], corners[1], volume.ijk_to_ras, volume.shape_kji, axis)
        prompts[index] = dataclasses.replace(prompts.get(index, Prompts()), box=np.asarray(box, np.float32))
    if not prompts:
        raise MedicoSAMError("no prompt given: add --point R,A,S (and/or --neg-point, --box twice)")
    return prompts


def segment_volume(request: SegmentRequest, progress: Optional[Callable[[int, int], None]] = None,
                   download_progress=None) -> SegmentSummary:
    """Read the image, predict the prompted slices, optionally propagate, write the mask."""
    from .device import get_device
    from .geometry import get_slice_axis
    from .models.checkpoint import load_sam
    from .normalization import get_intensity_window
    from .predictor import VolumePredictor
    from .propagation import PropagationConfig, get_volume_mask
    from .volume_io import read_volume, write_mask

    volume = read_volume(request.image)
    axis = get_slice_axis(VIEW_NORMALS[request.view], volume.ijk_to_ras)
    slice_prompts = get_slice_prompts(request, volume, axis)
    loaded = load_sam(request.model, device=get_device(request.device), allow_custom=request.allow_custom,
                      offline=request.offline, progress=download_progress)
    predictor = VolumePredictor.from_loaded(loaded, volume.array, fast=request.fast,
                                            window=get_intensity_window(volume.array, request.window))
    seeds = {index: predictor.predict_mask(axis, index, prompts) for index, prompts in slice_prompts.items()}
    if request.propagate:
        config = PropagationConfig(mode=request.mode, iou_threshold=request.stop_iou,
                                   max_slices=request.max_slices)
        masks = predictor.propagate(axis, seeds, config, progress=progress).masks
    else:
        masks = seeds
    mask = get_volume_mask(masks, volume.shape_kji, axis).astype(np.uint8)
    write_mask(mask, volume, request.out)
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    return SegmentSummary(str(request.out), axis, sorted(seeds),
                          sorted(i for i, m in masks.items() if m.any()), int(mask.sum()),
                          float(mask.sum()) * voxel_ml)
