"""Headless interactive segmentation of a volume file: prompts in, mask file out (`medicosam segment`)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .errors import DataError, InputError
from .normalization import PRESETS
from .options import option
from .propagation import PropagationConfig
from .segmentation_files import parse_color

logger = logging.getLogger(__name__)

#: RAS normals of the standard slice views.
VIEW_NORMALS = {"axial": (0.0, 0.0, 1.0), "coronal": (0.0, 1.0, 0.0), "sagittal": (1.0, 0.0, 0.0)}


@dataclasses.dataclass
class SegmentRequest:
    """What `medicosam segment` was asked to do; points are RAS mm unless `ijk`.

    The fields declared with `option` are also the command's options (`medicosam.options`).
    """

    image: str
    out: str
    model: str
    points: List[Sequence[float]] = dataclasses.field(default_factory=list)
    negative_points: List[Sequence[float]] = dataclasses.field(default_factory=list)
    box: List[Sequence[float]] = dataclasses.field(default_factory=list)
    markups: List[str] = dataclasses.field(default_factory=list)  # Slicer .mrk.json point lists, curves (and ROIs)
    rois: List[str] = dataclasses.field(default_factory=list)  # Slicer .mrk.json ROI files
    series_uid: Optional[str] = None  # which DICOM series of a folder holding several
    in_roi: bool = option(False, "Segment in ROI: the ROI's box on every slice it covers (MedSAM-style 3D box)")
    ijk: bool = option(False, "points and box are voxel indices (i,j,k), not RAS mm")
    view: str = option("axial", "slice orientation the prompts are drawn on", choices=tuple(VIEW_NORMALS))
    window: str = option("auto", "intensity preset", choices=PRESETS)
    name: str = option("Segment_1", "segment name written to .seg.nrrd / DICOM SEG outputs")
    color: str = option("", "segment colour R,G,B in 0..1 for .seg.nrrd / DICOM SEG (default: Slicer's first "
                        "segment colour)", metavar="R,G,B")
    propagate: bool = option(False, "propagate the mask through the volume")
    propagation: PropagationConfig = dataclasses.field(default_factory=PropagationConfig)
    device: str = option("auto", "auto, cpu, cuda or mps")
    server: Optional[str] = option(None, "run the model on this `medicosam serve` (e.g. http://gpu-host:8765) "
                                   "instead of here", metavar="URL")
    token: Optional[str] = option(None, "the server's access token (default: $MEDICOSAM_TOKEN)")
    offline: Optional[bool] = option(None, "never use the network (default: $MEDICOSAM_OFFLINE)")
    allow_custom: bool = False  # `--allow-custom` (`medicosam.cli.add_allow_custom`): see `load_sam`
    fast: bool = option(True, "the fast path (SDPA attention, bf16 where the device is fast at it; masks agree "
                        "to IoU ~0.998); --no-fast runs the official fp32 SAM path, slower, for exact parity")

    def __post_init__(self) -> None:
        if self.view not in VIEW_NORMALS:
            raise InputError(f"unknown view {self.view!r}: use one of {', '.join(VIEW_NORMALS)}")
        if self.window not in PRESETS:
            raise InputError(f"unknown intensity preset {self.window!r}: use one of {', '.join(PRESETS)}")
        parse_color(self.color)


@dataclasses.dataclass
class SegmentSummary:
    out: str
    axis: int
    seed_slices: List[int]
    slices: List[int]
    voxels: int
    volume_ml: float
    stops: str = ""  # after propagation: why each side stopped (PropagationResult.describe_stops)
    view: str = ""  # the slices' anatomical name (`axial`...): the view whose normal chose `axis`

    def __str__(self) -> str:
        n = len(self.slices)
        extent = "" if not n else f", slice {self.slices[0]}" if n == 1 else \
            f", slices {self.slices[0]}..{self.slices[-1]}"
        kind = (f"{self.view} slice" if self.view else "slice") + ("" if n == 1 else "s")
        text = (f"wrote {self.out}: {self.voxels} voxels ({self.volume_ml:.2f} mL) on {n} {kind} "
                f"(array axis {self.axis}{extent}), prompted on {self.seed_slices}")
        return f"{text}; propagation stopped {self.stops}" if self.stops else text


def get_prompt_index(point: Sequence[float], volume, ijk: bool) -> tuple:
    """(k, j, i) array index of a prompt point given in RAS mm, or as voxel (i, j, k) when `ijk`."""
    from .geometry import PointOutsideVolumeError, ras_to_array_index

    if not ijk:
        return ras_to_array_index(point, volume.ijk_to_ras, volume.shape_kji)
    if not np.all(np.isfinite(point)):
        raise PointOutsideVolumeError(f"voxel (i, j, k) = {tuple(point)} is not a finite position: give numbers")
    index = tuple(int(round(v)) for v in point[::-1])
    if any(not 0 <= v < n for v, n in zip(index, volume.shape_kji)):
        raise PointOutsideVolumeError(f"voxel (i, j, k) = {tuple(point)} is outside the volume of "
                                      f"{volume.shape_kji[::-1]} voxels (i, j, k): place the point inside it")
    return index


def get_request_markups(request: SegmentRequest, volume, axis: int):
    """The request's own prompts as `markups.Markups`: `--point` / `--neg-point` as control points (a voxel
    given with `--ijk` at its centre), `--box` as an ROI on the slice its centre falls on, drawn with the
    volume's in-plane axes. Box corners on different slices are named in a warning."""
    from .geometry import ijk_to_ras, ras_to_ijk
    from .markups import Markups, MarkupsPoint, get_roi_from_corners

    points = []
    for given, positive in ((request.points, True), (request.negative_points, False)):
        for point in given:
            if request.ijk:
                point = ijk_to_ras(np.asarray(get_prompt_index(point, volume, True), float)[::-1], volume.ijk_to_ras)
            points.append(MarkupsPoint(tuple(float(v) for v in np.asarray(point).reshape(3)), positive))
    rois = []
    if request.box:
        if len(request.box) != 2:
            raise InputError(f"--box needs exactly two corners (give it twice), got {len(request.box)}")
        corners = [ijk_to_ras(np.asarray(c, float), volume.ijk_to_ras).reshape(3) if request.ijk
                   else np.asarray(c, float) for c in request.box]
        rois.append(get_roi_from_corners(corners[0], corners[1], volume.ijk_to_ras, volume.shape_kji, axis))
        corner_slices = sorted({int(np.floor(ras_to_ijk(c, volume.ijk_to_ras).reshape(3)[2 - axis] + 0.5))
                                for c in corners})
        if len(corner_slices) > 1:
            centre = int(np.floor(ras_to_ijk(np.mean(corners, axis=0), volume.ijk_to_ras).reshape(3)[2 - axis] + 0.5))
            logger.warning("the box corners fall on slices %s along array axis %d; the box is drawn on slice %d, "
                           "the one its centre falls on", corner_slices, axis, centre)
    return Markups(points, rois)


def get_slice_prompts(request: SegmentRequest, volume, axis: int, markups=None) -> Dict[int, object]:
    """Prompts per slice index, by the one placement rule (`markups.get_markup_prompts`) on the request's
    own prompts (`get_request_markups`) and `markups`, the Slicer markups files (`read_markups`).

    A slice holding only negative points is refused: SAM has no object to find there (its mask would
    be empty or arbitrary), so the point was almost surely meant for another slice.
    """
    from .markups import Markups, get_markup_prompts

    found = get_request_markups(request, volume, axis) + (markups or Markups())
    if not (found.points or found.rois or found.curves):
        raise InputError("no prompt given: add --point R,A,S (and/or --neg-point, --box twice, --markups, --roi)")
    prompts = get_markup_prompts(found, volume.ijk_to_ras, volume.shape_kji, axis, every_roi_slice=request.in_roi)
    negative_only = sorted(i for i, p in prompts.items() if p.box is None and not p.labels.any())
    if negative_only:
        raise InputError(
            f"slice(s) {negative_only} along array axis {axis} hold only negative points, which give no object "
            f"to segment; prompted slices with a positive point or box: {sorted(set(prompts) - set(negative_only))}. "
            "Put each --neg-point on the slice of a --point or --box (same coordinate along the view's normal)."
        )
    return prompts


def read_markups(request: SegmentRequest):
    """The `markups.Markups` of the request's Slicer markups files; an `--roi` file holds only ROIs."""
    from .markups import DataError, Markups, read_markups_file

    markups = Markups()
    for path in request.markups:
        markups += read_markups_file(path)
    for path in request.rois:
        found = read_markups_file(path)
        if found.points or found.curves or not found.rois:
            raise DataError(f"{path}: --roi needs a file holding ROIs only; give point lists and curves with "
                            "--markups")
        markups += found
    if request.in_roi and not markups.rois:
        raise InputError("--in-roi needs an ROI: add --roi box.mrk.json")
    return markups


def _intersect(roi_range, slice_range):
    """The slices both the ROI and `--slice-range` allow."""
    if slice_range is None:
        return roi_range
    first, last = max(roi_range[0], slice_range[0]), min(roi_range[1], slice_range[1])
    if first > last:
        raise InputError(f"--slice-range {slice_range[0]} {slice_range[1]} and the ROI's slices "
                         f"{roi_range[0]}..{roi_range[1]} do not overlap: widen one of them")
    return first, last


def _check_finite_values(volume) -> None:
    """An image without a single finite value (all NaN / inf) can only give an empty mask."""
    if volume.array.dtype.kind == "f" and not np.isfinite(volume.array).any():
        raise DataError(f"{volume.path} holds no finite intensity (all voxels are NaN or inf): "
                             "there is nothing to segment; check how the image was made")


def _get_remote_predictor(request: SegmentRequest, array: np.ndarray):
    """A `medicosam.client.RemotePredictor` on `request.server`; a local model name is not used then."""
    import os

    from .client import RemotePredictor, ServerClient

    client = ServerClient(request.server, request.token or os.environ.get("MEDICOSAM_TOKEN"))
    if request.model:
        logger.warning("--server given: the server's model %s runs, not %s", client.get_model()["name"], request.model)
    return RemotePredictor(client, array, window=request.window, fast=request.fast)


def segment_volume(request: SegmentRequest, progress: Optional[Callable[[int, int], None]] = None,
                   download_progress=None) -> SegmentSummary:
    """Read the image, predict the prompted slices, optionally propagate, write the mask."""
    from .device import get_device
    from .geometry import get_slice_axis
    from .markups import get_propagation_range
    from .models.checkpoint import load_sam
    from .normalization import get_intensity_window
    from .predictor import get_volume_predictor
    from .propagation import get_volume_mask
    from .segmentation_files import Segment, check_source_for_output, write_segments
    from .volume_io import check_mask_path, read_volume

    check_mask_path(request.out)  # before any file is read or model loaded
    config = request.propagation
    volume = read_volume(request.image, request.series_uid)
    check_source_for_output(volume, request.out)  # DICOM SEG needs a DICOM series, before the model loads
    _check_finite_values(volume)
    axis = get_slice_axis(VIEW_NORMALS[request.view], volume.ijk_to_ras)
    markups = read_markups(request)
    slice_prompts = get_slice_prompts(request, volume, axis, markups)
    roi_range = get_propagation_range(markups.rois, volume.ijk_to_ras, volume.shape_kji, axis)
    if roi_range is not None:  # an ROI over several slices bounds propagation to them
        config = dataclasses.replace(config, slice_range=_intersect(roi_range, config.slice_range))
    if request.server:  # the server's model: no torch, no weights here
        predictor = _get_remote_predictor(request, volume.array)
    else:
        loaded = load_sam(request.model, device=get_device(request.device), allow_custom=request.allow_custom,
                          offline=request.offline, progress=download_progress)
        predictor = get_volume_predictor(loaded, volume.array, fast=request.fast,
                                         window=get_intensity_window(volume.array, request.window))
    seeds = {index: predictor.predict_mask(axis, index, prompts) for index, prompts in slice_prompts.items()}
    stops = ""
    if request.propagate:
        result = predictor.propagate(axis, seeds, config, progress=progress)
        masks, stops = result.masks, result.describe_stops()
    else:
        masks = seeds
    mask = get_volume_mask(masks, volume.shape_kji, axis).astype(np.uint8)
    out = write_segments([Segment(request.name, mask, parse_color(request.color))], volume, request.out)
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    return SegmentSummary(str(out), axis, sorted(seeds),
                          sorted(i for i, m in masks.items() if m.any()), int(mask.sum()),
                          float(mask.sum()) * voxel_ml, stops, request.view)
