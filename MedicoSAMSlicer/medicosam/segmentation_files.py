"""Segmentations with names and colours: Slicer's `.seg.nrrd` (slicerio) and DICOM SEG (highdicom).

A mask image holds ids; a segmentation file holds *segments*: a name, a colour, optionally a terminology
code, and a binary mask each, which may overlap (Slicer stores overlapping segments in layers, DICOM SEG
one frame per segment). This module is the one place that reads and writes them, on the grid of the image
they belong to, for `medicosam segment --out x.seg.nrrd | x.dcm` and for the training and evaluation
readers. slicerio and highdicom are imported only here, when a file is written or read, so everything
else works without them (the `formats` extra: `pip install "medicosam[formats]"`; pydicom comes with
highdicom, so it is imported the same way, with the same message when missing).

Geometry: a `.seg.nrrd` must lie on its image's voxel grid (same spacing and axes, origin on a voxel of
the image). Slicer may save a segmentation cropped to the segments' extent; such a file is pasted into
the full grid. Anything else is refused, naming both files. DICOM SEG frames are matched to the image's
slices through the SOP Instance UIDs they reference, so they land on the source series' grid exactly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

import numpy as np

from .atomic import writing_atomically
from .errors import DataError, InputError
from .geometry import get_ijk_to_lps

if TYPE_CHECKING:  # volume_io imports SimpleITK; `segment`'s options import this module without it
    from .volume_io import Volume

PathLike = Union[str, Path]

SEG_NRRD_SUFFIX = ".seg.nrrd"
#: Slicer's colour of the first segment it creates (its generic anatomy colour table, "tissue").
DEFAULT_COLOR = (0.501961, 0.682353, 0.501961)
#: What Slicer assigns to a segment nobody coded: category and type "Tissue" (SNOMED CT 85756007).
DEFAULT_TERMINOLOGY = {"contextName": "Segmentation category and type - 3D Slicer General Anatomy list",
                       "category": ["SCT", "85756007", "Tissue"], "type": ["SCT", "85756007", "Tissue"]}
_GEOMETRY_TOLERANCE = 1e-3  # mm, and direction cosines
_FORMATS_EXTRA = 'pip install "medicosam[formats]" (or: pip install slicerio highdicom)'


@dataclasses.dataclass
class Segment:
    """One named structure: a (K, J, I) bool mask on its image's grid, its colour (RGB in 0..1) and,
    when known, its terminology ({"category": [scheme, code, meaning], "type": [...]}, slicerio's form)."""

    name: str
    mask: np.ndarray
    color: Tuple[float, float, float] = DEFAULT_COLOR
    terminology: Optional[dict] = None


def parse_color(text: str) -> Tuple[float, float, float]:
    """`"0.8,0.2,0.2"` -> (0.8, 0.2, 0.2); an empty text is Slicer's default colour."""
    if not text:
        return DEFAULT_COLOR
    try:
        color = tuple(float(value) for value in text.split(","))
    except ValueError:
        color = ()
    if len(color) != 3 or not all(0.0 <= value <= 1.0 for value in color):
        raise InputError(f"--color {text}: give red, green and blue in 0..1, e.g. --color 0.8,0.2,0.2")
    return color


def _import(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise InputError(f"reading and writing segmentation files needs {module}: {_FORMATS_EXTRA}") from error


# ---------------------------------------------------------------- writing


def check_source_for_output(volume: Volume, path: PathLike) -> None:
    """Refuse a DICOM SEG destination for an image that is not a DICOM series, before any work is done."""
    from .volume_io import get_output_kind

    if get_output_kind(path) == "dicom-seg" and not volume.source_files:
        raise InputError(f"Cannot write DICOM SEG to {path}: DICOM SEG references the DICOM series it segments, "
                         f"and {volume.path} is not a DICOM series folder; write .seg.nrrd or .nii.gz instead")


def write_segments(segments: Sequence[Segment], reference: Volume, path: PathLike) -> Path:
    """Write `segments` to `path` in the format its name asks for (`volume_io.get_output_kind`); return the
    file written. A plain mask image (.nii.gz, .nrrd, ...) gets segment i as label i (later ones win where
    they overlap); names and colours need `.seg.nrrd` or DICOM SEG."""
    from .volume_io import get_output_kind, write_mask

    kind = get_output_kind(path)
    for segment in segments:
        if segment.mask.shape != reference.shape_kji:
            raise InputError(f"segment {segment.name!r} has shape {segment.mask.shape} but the volume "
                             f"{reference.path or ''} has {reference.shape_kji} (K, J, I)")
    if kind == "seg.nrrd":
        return _write_seg_nrrd(segments, reference, Path(path))
    if kind == "dicom-seg":
        return _write_dicom_seg(segments, reference, Path(path))
    labels = np.zeros(reference.shape_kji, np.uint8)
    for label, segment in enumerate(segments, start=1):
        labels[segment.mask.astype(bool)] = label
    return write_mask(labels, reference, path)


def _write_seg_nrrd(segments: Sequence[Segment], reference: Volume, path: Path) -> Path:
    slicerio = _import("slicerio")
    segmentation = slicerio.create_segmentation(reference.shape_kji[::-1], get_ijk_to_lps(reference.ijk_to_ras))
    segmentation["masterRepresentation"] = "Binary labelmap"
    segmentation["containedRepresentationNames"] = ["Binary labelmap"]
    for index, segment in enumerate(segments, start=1):
        fields = {"id": f"Segment_{index}", "name": segment.name, "color": list(segment.color),
                  "terminology": segment.terminology or DEFAULT_TERMINOLOGY}
        slicerio.add_segment(segmentation, np.asarray(segment.mask, bool).transpose(2, 1, 0), fields)
    try:
        with writing_atomically(path) as temporary:
            slicerio.write_segmentation(str(temporary), segmentation)
    except OSError as error:
        raise InputError(f"Cannot write the segmentation to {path}: {error}") from error
    return path


def _get_code(code: Sequence[str]):
    Code = _import("pydicom.sr.coding").Code

    return Code(value=code[1], scheme_designator=code[0], meaning=code[2])


def _write_dicom_seg(segments: Sequence[Segment], reference: Volume, path: Path) -> Path:
    from . import __version__

    hd, pydicom = _import("highdicom"), _import("pydicom")
    codes = _import("pydicom.sr.codedict").codes

    check_source_for_output(reference, path)
    if not segments:
        raise InputError(f"Cannot write DICOM SEG to {path}: no segment to write")
    sources = [pydicom.dcmread(file) for file in reference.source_files]
    algorithm = hd.AlgorithmIdentificationSequence(name="MedicoSAM", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for number, segment in enumerate(segments, start=1):
        terminology = segment.terminology or DEFAULT_TERMINOLOGY
        rgb = [round(255 * value) for value in segment.color]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=segment.name,
            segmented_property_category=_get_code(terminology["category"]),
            segmented_property_type=_get_code(terminology["type"]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC, algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*rgb)))
    pixels = np.stack([np.asarray(segment.mask, bool) for segment in segments], axis=-1)
    # Empty frames are left out, as is usual, unless all are empty: an empty result is still a result.
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=300,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="MedicoSAM",
        manufacturer_model_name="MedicoSAM", software_versions=__version__, device_serial_number="0",
        omit_empty_frames=bool(pixels.any()), series_description="MedicoSAM segmentation")
    if path.is_dir():
        path = path / f"{seg.SOPInstanceUID}.dcm"
    try:
        with writing_atomically(path) as temporary:
            seg.save_as(temporary)
    except OSError as error:
        raise InputError(f"Cannot write the DICOM SEG to {path}: {error}") from error
    return path


# ---------------------------------------------------------------- reading


def is_segmentation_file(path: PathLike) -> bool:
    """True for a `.seg.nrrd` or a DICOM SEG file (the latter read from its header's Modality)."""
    name = Path(path).name.lower()
    if name.endswith(SEG_NRRD_SUFFIX):
        return True
    return name.endswith(".dcm") and Path(path).is_file() and get_dicom_seg_series(path) is not None


def get_dicom_seg_series(path: PathLike) -> Optional[str]:
    """The SeriesInstanceUID a DICOM SEG file segments, or None when the file is not a DICOM SEG."""
    pydicom = _import("pydicom")

    try:
        header = pydicom.dcmread(str(path), stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError):
        return None
    if header.get("Modality") != "SEG" or "ReferencedSeriesSequence" not in header:
        return None
    return str(header.ReferencedSeriesSequence[0].SeriesInstanceUID)


def read_segments(path: PathLike, image: Volume) -> List[Segment]:
    """The segments of a `.seg.nrrd` or DICOM SEG file, each mask on `image`'s (K, J, I) grid.

    Raises:
        DataError: the file cannot be read, or its geometry is not the image's (both files are named).
    """
    path = Path(path)
    if path.name.lower().endswith(SEG_NRRD_SUFFIX):
        return _read_seg_nrrd(path, image)
    return _read_dicom_seg(path, image)


def _read_seg_nrrd(path: Path, image: Volume) -> List[Segment]:
    slicerio = _import("slicerio")
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except (OSError, ValueError, KeyError) as error:
        raise DataError(f"{path}: cannot read this Slicer segmentation ({error})") from error
    if not segmentation.get("segments"):
        raise DataError(f"{path} has no segment header (Segment0_ID, Segment0_LabelValue, ...): it is a plain NRRD "
                        "image, not a Slicer segmentation; name a label image .nrrd, or save the segmentation from "
                        "Slicer (Segmentations module: export to file)")
    _check_segment_headers(segmentation, path)
    offset = _get_grid_offset(segmentation["ijkToLPS"], segmentation["voxels"].shape[-3:], image, path)
    segments = []
    for segment in segmentation["segments"]:
        mask = np.zeros(image.shape_kji, bool)
        cropped = slicerio.segment_mask(segmentation, segment).transpose(2, 1, 0)
        k, j, i = offset[::-1]
        mask[k:k + cropped.shape[0], j:j + cropped.shape[1], i:i + cropped.shape[2]] = cropped
        segments.append(Segment(segment.get("name", segment["id"]), mask,
                                tuple(segment.get("color", DEFAULT_COLOR)), segment.get("terminology")))
    return segments


def _check_segment_headers(segmentation: dict, path: Path) -> None:
    """Each segment's header must point at data the file holds: a layer that exists, and a label value found
    in that layer whenever the segment's extent says it has voxels (Slicer writes "0 -1 0 -1 0 -1" for an
    empty segment). Otherwise the segment would read as empty, or fail, without naming the header."""
    voxels = segmentation["voxels"]
    layers = voxels.shape[0] if voxels.ndim == 4 else 1
    for number, segment in enumerate(segmentation["segments"]):
        field = f"Segment{number}_"
        layer, value = segment.get("layer", 0), segment.get("labelValue", 1)  # slicerio's defaults
        if not 0 <= layer < layers:
            raise DataError(f"{path}: {field}Layer={layer}, but the file holds {layers} layer(s) (segment "
                            f"{segment.get('name', segment.get('id'))!r}): its header does not match its data; "
                            "save the segmentation again from Slicer")
        extent = segment.get("extent")
        if extent is None or any(extent[2 * i] > extent[2 * i + 1] for i in range(3)):
            continue  # an empty segment, or one whose extent the header does not give
        data = voxels[layer] if voxels.ndim == 4 else voxels
        if not np.any(data == value):
            raise DataError(f"{path}: {field}LabelValue={value} does not occur in layer {layer}, though "
                            f"{field}Extent={' '.join(map(str, extent))} says segment "
                            f"{segment.get('name', segment.get('id'))!r} has voxels: its header does not match "
                            "its data; save the segmentation again from Slicer")


def _get_grid_offset(ijk_to_lps: np.ndarray, shape_ijk: Sequence[int], image: Volume, path: Path) -> Tuple[int, ...]:
    """Voxel (i, j, k) of the image where the segmentation's voxel (0, 0, 0) lies; raise unless the
    segmentation's grid is the image's grid, or a crop of it (Slicer's "crop to minimum extent")."""
    image_ijk_to_lps = get_ijk_to_lps(image.ijk_to_ras)
    offset = np.linalg.solve(image_ijk_to_lps[:3, :3], np.asarray(ijk_to_lps)[:3, 3] - image_ijk_to_lps[:3, 3])
    rounded = np.round(offset).astype(int)
    image_shape = np.asarray(image.shape_kji[::-1])
    same_axes = np.allclose(ijk_to_lps[:3, :3], image_ijk_to_lps[:3, :3], atol=_GEOMETRY_TOLERANCE)
    on_grid = np.allclose(offset, rounded, atol=_GEOMETRY_TOLERANCE)
    inside = np.all(rounded >= 0) and np.all(rounded + np.asarray(shape_ijk) <= image_shape)
    if not (same_axes and on_grid and inside):
        def describe(matrix, shape):
            spacing = np.linalg.norm(np.asarray(matrix)[:3, :3], axis=0)
            return (f"{tuple(int(n) for n in shape)} voxels (i, j, k), spacing {np.round(spacing, 4).tolist()} mm, "
                    f"origin (LPS) {np.round(np.asarray(matrix)[:3, 3], 3).tolist()}")
        raise DataError(f"{path} is not on the voxel grid of its image {image.path}: the segmentation has "
                        f"{describe(ijk_to_lps, shape_ijk)}, the image {describe(image_ijk_to_lps, image_shape)}. "
                        "Pair each segmentation with the image it was drawn on (in Slicer: export it with that "
                        "volume as reference geometry).")
    return tuple(int(v) for v in rounded)


def _read_dicom_seg(path: Path, image: Volume) -> List[Segment]:
    hd, pydicom = _import("highdicom"), _import("pydicom")
    if not image.source_files:
        raise DataError(f"{path}: a DICOM SEG is read on its source DICOM series, and {image.path} is not a "
                        "DICOM series folder; pair the SEG file with the series it references")
    try:
        seg = hd.seg.segread(str(path))
    except (OSError, ValueError, AttributeError, pydicom.errors.InvalidDicomError) as error:
        raise DataError(f"{path}: cannot read this DICOM SEG ({error})") from error
    uids = [str(pydicom.dcmread(file, stop_before_pixels=True).SOPInstanceUID) for file in image.source_files]
    segments = []
    for number in seg.get_segment_numbers():
        try:
            pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[number],
                                                       assert_missing_frames_are_empty=True)
        except (ValueError, KeyError) as error:
            raise DataError(f"{path} does not segment the series in {image.path} ({error}); pair the SEG file "
                            "with the series it references") from error
        description = seg.get_segment_description(number)
        color = DEFAULT_COLOR
        if "RecommendedDisplayCIELabValue" in description:
            lab = hd.color.CIELabColor.from_dicom_value(description.RecommendedDisplayCIELabValue)
            color = tuple(round(value / 255, 6) for value in lab.to_rgb())
        terminology = {key: [code.scheme_designator, code.value, code.meaning] for key, code in
                       (("category", description.segmented_property_category),
                        ("type", description.segmented_property_type))}
        segments.append(Segment(description.segment_label, pixels[..., 0].astype(bool), color, terminology))
    return segments
