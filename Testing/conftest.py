"""Shared fixtures: tiny real SAM models and real volumes from installed packages.

Missing data is an error, not a skip: the data ships with packages that `.ci/setup` installs.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
import pytest


@pytest.fixture
def tiny_sam():
    """A real `segment_anything` Sam at 256 px with random (seeded) weights."""
    import torch

    from medicosam.models.config import build_sam, get_tiny_config

    torch.manual_seed(0)
    return build_sam(get_tiny_config())


@pytest.fixture(scope="session")
def icbm152():
    """nilearn's MNI ICBM152 T1 and GM / WM labels, downsampled to 2 mm (KJI arrays)."""
    import SimpleITK as sitk

    from medicosam_training.sample_data import get_nilearn_icbm152

    arrays = {kind: sitk.GetArrayFromImage(sitk.ReadImage(str(get_nilearn_icbm152(kind))))[::2, ::2, ::2]
              for kind in ("t1", "gm", "wm")}
    return {"t1": arrays["t1"], "gm": arrays["gm"] > 127, "wm": arrays["wm"] > 127}


def largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n == 0:
        return mask.astype(bool)
    sizes = ndimage.sum(mask, labels, range(1, n + 1))
    return labels == (int(np.argmax(sizes)) + 1)
