"""Read medical volumes with SimpleITK and write masks back on exactly the input's voxel grid.

Reading rules:
- NIfTI, NRRD/NHDR, MHA/MHD and any other format SimpleITK reads; DICOM as a series folder or one file.
- A DICOM file is read alone (a multi-frame file is a volume); pass the folder to read a series.
  Guessing the series from one file means scanning its whole folder, and goes wrong in folders that
  hold copies or echoes sharing a series UID.
- A folder with several DICOM series is refused unless `series_uid` names one (`medicosam segment
  --series UID`); the error lists every series (UID, description, number of files). A folder whose series
  sit in sub-folders is refused naming those sub-folders (GDCM does not look into them, and ITK's own
  "No Series were found" warnings are kept off the console). Guessing (e.g. the
  largest) picks a localizer or the wrong phase too easily. Series with uneven or repeated slice
  positions (gaps, a localizer, several echoes) are refused: SimpleITK would silently give them a
  wrong geometry.
- A 2D image is read as a volume of one slice, so 2D and 3D go through the same code.
- RGB(A) 8-bit images keep their colour: `Volume.array` is (K, J, I, 3) (alpha dropped). Other
  multi-component (vector, complex) images and 4D series with more than one time point are refused.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk

from medicosam.atomic import writing_atomically
from medicosam.geometry import get_ijk_to_ras

from .errors import DataError, InputError

SUPPORTED_FORMATS = (
    "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), DICOM (file or folder)"
)
MASK_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")
#: Segmentation outputs (`medicosam.segmentation_files`): Slicer's segmentation and DICOM SEG (or a folder for it).
SEGMENTATION_SUFFIXES = (".seg.nrrd", ".dcm")
_POSITION_TAG = "0020|0032"
_DESCRIPTION_TAG = "0008|103e"
#: A NIfTI name whose stem still ends like a NIfTI / Analyze file (m.nii.gz.nii.gz, m.img.nii): the NIfTI
#: writer strips the suffix and writes another file (m.nii.gz, m.hdr) than the one asked for.
_NIFTI_LIKE_STEM = re.compile(r"\.(nii|hdr|img|nia)(\.gz)?$", re.IGNORECASE)
_SPACING_RELATIVE_TOLERANCE = 0.01

PathLike = Union[str, os.PathLike]


@dataclass
class Volume:
    """A volume as a KJI array plus the SimpleITK (LPS) geometry it was stored with.

    The LPS geometry is kept verbatim, not re-derived from `ijk_to_ras`, so written masks carry
    bit-identical origin, spacing and direction.

    Attributes:
        array: (K, J, I) intensities, or (K, J, I, 3) for RGB.
        spacing: voxel size in mm in (i, j, k) order, as SimpleITK's GetSpacing; array axis a has
            spacing `spacing[2 - a]`.
        origin_lps: world position (LPS, mm) of voxel (0, 0, 0).
        direction_lps: 3x3 direction cosines, row-major, as SimpleITK's GetDirection.
        path: the file or folder it was read from.
        source_files: for a DICOM series, its files in slice order (array index k is file k): what a
            DICOM SEG written on this volume references.
    """

    array: np.ndarray
    spacing: Tuple[float, float, float]
    origin_lps: Tuple[float, float, float]
    direction_lps: Tuple[float, ...]
    path: Optional[Path] = None
    source_files: Tuple[str, ...] = ()

    @property
    def ijk_to_ras(self) -> np.ndarray:
        """4x4 IJK -> RAS matrix (Slicer's IJKToRAS)."""
        return get_ijk_to_ras(self.origin_lps, self.spacing, self.direction_lps)

    @property
    def shape_kji(self) -> Tuple[int, int, int]:
        """(K, J, I) voxel counts, without the colour axis of RGB volumes."""
        return tuple(self.array.shape[:3])


#: How many sub-folders holding DICOM series a "no series here" error names.
_LISTED_SUBFOLDERS = 5


def _read_failure(path: Path, reason: str, formats: bool = True) -> DataError:
    """`formats`: add the list of readable formats, where the format may be the problem."""
    listing = f" Supported formats: {SUPPORTED_FORMATS}." if formats else ""
    return DataError(f"Cannot read {path}: {reason}.{listing}")


def _describe_series(uid: str, files: Tuple[str, ...]) -> str:
    """`UID "description" (N files)`, the description read from the header of the series' first file."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    try:
        reader.ReadImageInformation()
        description = reader.GetMetaData(_DESCRIPTION_TAG).strip() if reader.HasMetaDataKey(_DESCRIPTION_TAG) else ""
    except RuntimeError:
        description = ""
    return f'{uid} "{description}" ({len(files)} files)'


def _get_series_ids(folder: Path) -> Tuple[str, ...]:
    """The DICOM series UIDs of the files directly in `folder`, without ITK's console warnings (GDCM
    warns "No Series were found" for every folder without one)."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _find_series_folders(folder: Path) -> List[str]:
    """Sub-folders of `folder` (any depth, in name order) that hold DICOM series, as `name (N series)`;
    the search stops after one more than `_LISTED_SUBFOLDERS`."""
    found: List[str] = []
    for root, folders, _ in os.walk(folder):
        folders.sort()
        if Path(root) != folder and (uids := _get_series_ids(Path(root))):
            found.append(f"{Path(root).relative_to(folder)} ({len(uids)} series)")
            if len(found) > _LISTED_SUBFOLDERS:
                break
    return found


def _get_series_files(folder: Path, series_uid: Optional[str]) -> Tuple[str, ...]:
    """Files of one DICOM series in `folder`, in slice order (GDCM sorts them by position)."""
    uids = _get_series_ids(folder)
    if not uids:
        inside = _find_series_folders(folder)
        if not inside:
            raise _read_failure(folder, "the folder holds no DICOM series")
        more = ", ..." if len(inside) > _LISTED_SUBFOLDERS else ""
        raise _read_failure(folder, f"the folder holds no DICOM series itself, but its sub-folders do: "
                                    f"{', '.join(inside[:_LISTED_SUBFOLDERS])}{more}; give one of them", formats=False)
    files = {uid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid) for uid in sorted(uids)}
    if series_uid is None and len(files) == 1:
        return next(iter(files.values()))
    if series_uid in files:
        return files[series_uid]
    listing = "; ".join(_describe_series(uid, uid_files) for uid, uid_files in files.items())
    problem = f"series {series_uid} is not in the folder" if series_uid else "the folder holds several series"
    raise _read_failure(folder, f"{problem}: pick one of {listing} with --series UID", formats=False)


def _check_even_slice_spacing(reader, folder: Path) -> None:
    """Refuse series whose slice positions are repeated or unevenly spaced along the stack."""
    n_slices = len(reader.GetFileNames())
    if n_slices < 2 or not all(reader.HasMetaDataKey(i, _POSITION_TAG) for i in range(n_slices)):
        return
    positions = [
        [float(v) for v in reader.GetMetaData(i, _POSITION_TAG).split("\\")] for i in range(n_slices)
    ]
    steps = np.linalg.norm(np.diff(np.asarray(positions), axis=0), axis=1)
    if steps.min() == 0 or np.ptp(steps) > _SPACING_RELATIVE_TOLERANCE * np.median(steps):
        raise DataError(
            f"The DICOM series in {folder} has uneven or repeated slice positions (steps from "
            f"{steps.min():.2f} to {steps.max():.2f} mm: missing slices, a localizer, or several echoes or "
            "phases in one series). MedicoSAM needs a regular grid: load it in Slicer's DICOM module (which "
            "regularizes the geometry) and save it as NRRD, or remove the stray files."
        )


def _read_dicom_series(files: Tuple[str, ...], folder: Path):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    image = reader.Execute()
    _check_even_slice_spacing(reader, folder)
    return image


def _read_image(path: Path, series_uid: Optional[str]):
    """(the SimpleITK image at `path` (file or DICOM folder), the DICOM series' files or ())."""
    if not path.exists():
        raise _read_failure(path, "no such file or folder")
    try:
        if path.is_dir():
            files = _get_series_files(path, series_uid)
            return _read_dicom_series(files, path), tuple(files)
        return sitk.ReadImage(str(path)), ()
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise _read_failure(path, f"SimpleITK could not read it ({reason})") from error


def _to_3d_scalar_or_rgb(image, path: Path):
    """Bring 2D images and 4D single-time-point images to 3D; refuse what SAM cannot segment."""
    dimension = image.GetDimension()
    if dimension == 2:
        image = sitk.JoinSeries([image])
    elif dimension == 4:
        n_times = image.GetSize()[3]
        if n_times != 1:
            raise DataError(
                f"{path} is a 4D image with {n_times} time points: MedicoSAM segments 3D volumes; "
                "extract one time point first (e.g. in Slicer's Sequences module or with SimpleITK)."
            )
        image = image[:, :, :, 0]
    elif dimension != 3:
        raise DataError(f"{path} is a {dimension}D image: MedicoSAM segments 2D and 3D images.")
    n_components = image.GetNumberOfComponentsPerPixel()
    is_rgb = n_components in (3, 4) and image.GetPixelID() == sitk.sitkVectorUInt8
    if n_components > 1 and not is_rgb:
        raise DataError(
            f"{path} has {n_components} values per voxel ({image.GetPixelIDTypeAsString()}): MedicoSAM "
            "segments grey-scale or 8-bit RGB images; extract one component (or the magnitude) first."
        )
    return image


def read_volume(path: PathLike, series_uid: Optional[str] = None) -> Volume:
    """Read a volume file or DICOM folder into a `Volume` (see the module docstring for the rules).

    Args:
        path: image file, or a folder of DICOM files.
        series_uid: which DICOM series to read from a folder holding several (default: the largest).

    Raises:
        DataError: the path is missing or SimpleITK cannot read it.
        DataError: a 4D, vector or unevenly spaced image.
    """
    path = Path(path)
    image, source_files = _read_image(path, series_uid)
    image = _to_3d_scalar_or_rgb(image, path)
    array = sitk.GetArrayFromImage(image)
    if array.ndim == 4:
        array = np.ascontiguousarray(array[..., :3])
    return Volume(
        array=array,
        spacing=tuple(image.GetSpacing()),
        origin_lps=tuple(image.GetOrigin()),
        direction_lps=tuple(image.GetDirection()),
        path=path,
        source_files=source_files,
    )


def get_output_kind(path: PathLike) -> str:
    """What a destination asks for: "seg.nrrd" (Slicer segmentation), "dicom-seg" (a `.dcm` file, or an
    existing folder to write one into, unless it is named like a mask file) or "mask" (a label image)."""
    name = Path(path).name.lower()
    if name.endswith(SEGMENTATION_SUFFIXES[0]):
        return "seg.nrrd"
    if name.endswith(SEGMENTATION_SUFFIXES[1]) or (Path(path).is_dir() and not name.endswith(MASK_SUFFIXES)):
        return "dicom-seg"
    return "mask"


def check_mask_path(path: PathLike) -> Path:
    """Refuse a destination its writer would not write exactly, before any work is done.

    Label images: the suffix must be one of MASK_SUFFIXES in lower case (ITK writes `.MHA` as a .mhd + .zraw
    pair and refuses upper-case NIfTI), a NIfTI name must not end in a doubled suffix (the writer would
    write a shorter name). Segmentations: `.seg.nrrd`, `.dcm`, or an existing folder (DICOM SEG). The
    folder must exist and take a new file.
    """
    path = Path(path)
    if get_output_kind(path) != "mask":
        return _check_writable(path if path.is_dir() else path.parent, path)
    name = path.name
    suffix = next((s for s in sorted(MASK_SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)
    if suffix is None or len(name) == len(suffix):
        raise InputError(
            f"Cannot write a mask to {path}: use one of {', '.join(MASK_SUFFIXES + SEGMENTATION_SUFFIXES)}, in "
            "lower case, or an existing folder for DICOM SEG (single files, written whole or not at all)."
        )
    stem_suffix = _NIFTI_LIKE_STEM.search(name[: -len(suffix)])
    if suffix.startswith(".nii") and stem_suffix:
        raise InputError(
            f"Cannot write a mask to {path}: the name ends in a doubled suffix ({stem_suffix.group()}{suffix}), "
            f"which the NIfTI writer shortens; name it {name[: stem_suffix.start()]}{suffix}."
        )
    if path.is_dir():
        raise InputError(f"Cannot write a mask to {path}: it is a folder; give a file name.")
    return _check_writable(path.parent, path)


def _check_writable(folder: Path, path: Path) -> Path:
    if not folder.is_dir():
        raise InputError(f"Cannot write {path}: the folder {folder} does not exist.")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise InputError(f"Cannot write {path}: the folder {folder} is not writable ({error}).") from error
    return path


def write_mask(mask: np.ndarray, reference: Volume, path: PathLike) -> Path:
    """Write a (K, J, I) labelmap as uint8 on the reference volume's exact grid; return the path.

    The file is written under a temporary name in the destination folder and renamed when complete,
    so a crash never leaves a half-written mask where a previous one was.

    Raises:
        InputError: the shape differs from the reference, values do not fit 0..255, or the
            destination fails `check_mask_path`.
    """
    path = check_mask_path(path)
    mask = np.asarray(mask)
    if mask.shape != reference.shape_kji:
        raise InputError(
            f"The mask has shape {mask.shape} but the volume {reference.path or ''} has "
            f"{reference.shape_kji} (K, J, I): a mask must be on the volume's voxel grid."
        )
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise InputError(f"Mask values must be labels in 0..255, got {mask.min()}..{mask.max()}.")
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(reference.spacing)
    image.SetOrigin(reference.origin_lps)
    image.SetDirection(reference.direction_lps)
    try:
        with writing_atomically(path) as temporary:
            sitk.WriteImage(image, str(temporary), useCompression=True)
    except (RuntimeError, OSError) as error:
        raise InputError(f"Cannot write the mask to {path}: {error}") from error
    return path
