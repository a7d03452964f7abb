"""Shared fixtures: tiny real SAM models and real volumes from installed packages.

Missing data is an error, not a skip: the data ships with packages that `.ci/setup` installs.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest


@pytest.fixture
def tiny_sam():
    """A real `segment_anything` Sam at 256 px with random (seeded) weights."""
    import torch

    from medicosam.models.config import build_sam, get_tiny_config

    torch.manual_seed(0)
    return build_sam(get_tiny_config())


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """The seeded `tiny_sam` exported as an official SAM checkpoint file."""
    import torch

    from medicosam.models.checkpoint import export_sam
    from medicosam.models.config import build_sam, get_tiny_config

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    export_sam(build_sam(get_tiny_config()), path)
    return path


@pytest.fixture(scope="session")
def icbm152():
    """nilearn's MNI ICBM152 T1 and GM / WM labels, downsampled to 2 mm (KJI arrays)."""
    import SimpleITK as sitk

    from medicosam_training.sample_data import get_nilearn_icbm152

    arrays = {kind: sitk.GetArrayFromImage(sitk.ReadImage(str(get_nilearn_icbm152(kind))))[::2, ::2, ::2]
              for kind in ("t1", "gm", "wm")}
    return {"t1": arrays["t1"], "gm": arrays["gm"] > 127, "wm": arrays["wm"] > 127}


@pytest.fixture(scope="session")
def ventricle():
    """BrainWeb T1 and PD slices (217 x 181 RGB files, equal channels: two slices of one colour volume) and
    the left lateral ventricle."""
    import numpy as np
    import SimpleITK as sitk

    from medicosam_training.sample_data import get_itk_examples_dir

    folder = get_itk_examples_dir()
    slices = [sitk.GetArrayFromImage(sitk.ReadImage(str(folder / name)))
              for name in ("BrainT1Slice.png", "BrainProtonDensitySlice.png")]
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "VentricleModel.png")))  # an RGB PNG
    return np.stack(slices), mask[..., 0] > 127


@pytest.fixture(scope="session")
def lite_cache(tmp_path_factory):
    """A model cache holding LiteMedSAM, taken offline from its package (as `.ci/setup`'s machine has it)."""
    from medicosam.models.download import download_model

    cache = tmp_path_factory.mktemp("lite_cache")
    download_model("litemedsam", cache_dir=cache, offline=True)
    return cache


@pytest.fixture(scope="session")
def lite(lite_cache):
    """LiteMedSAM (`LoadedSam`, the lite family), from `lite_cache`."""
    from medicosam.models.checkpoint import load_sam

    return load_sam(lite_cache / "litemedsam.pth")
