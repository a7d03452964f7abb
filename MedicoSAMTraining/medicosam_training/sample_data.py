"""Locate the real medical images that ship inside installed packages (no network, nothing committed).

- nilearn's MNI ICBM152 2009a template: T1 plus grey/white-matter probability maps
  (197 x 233 x 189, 1 mm, RAS). Labels: GM = gm > 127, WM = wm > 127, other brain = T1 > 0 and neither.
- Debian's insighttoolkit5-examples, unpacked by `.ci/fetch-itk-examples` into
  `$MEDICOSAM_TEST_DATA` (default `~/.cache/medicosam-test-data`).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

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


def get_itk_examples_dir() -> Path:
    """Folder of Debian's ITK example data (BrainT1Slice.png, KmeansTest_T1UCharRaw.nii.gz, ...)."""
    root = Path(os.environ.get("MEDICOSAM_TEST_DATA", Path.home() / ".cache" / "medicosam-test-data"))
    path = root / "usr/share/doc/insighttoolkit5-examples/examples/Data"
    if not path.is_dir():
        raise DataError(f"{path} not found: run `bash .ci/fetch-itk-examples`")
    return path
