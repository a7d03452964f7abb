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


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory):
    """A tiny SAM (128 px) trained with the `medicosam` preset for ~2 minutes on real axial MR slices
    (tissue classes of ICBM152 at 2 mm) plus phantoms, with its untrained twin and the volumes."""
    import copy

    import torch

    from medicosam.models.config import build_sam, get_tiny_config
    from medicosam_training.dataset import FolderDataset2D
    from medicosam_training.demo import get_brain_volumes, write_training_data
    from medicosam_training.objective import get_preset
    from medicosam_training.trainer import TrainConfig, train

    root = tmp_path_factory.mktemp("trained_tiny")
    volumes = get_brain_volumes()
    data = write_training_data(root / "data", volumes, n_phantoms=48, seed=0)
    dataset = FolderDataset2D(data / "images", data / "labels", image_size=128, n_obj=5, min_size=25,
                              label_mode="semantic")
    torch.manual_seed(0)
    sam = build_sam(get_tiny_config(image_size=128))
    untrained = copy.deepcopy(sam)
    config = TrainConfig(objective=get_preset("medicosam"), lr=TRAINED_TINY_LR, batch_size=4,
                         iterations=TRAINED_TINY_ITERATIONS, out_dir=root / "run", decoder_features=8, progress=False)
    result = train(sam, dataset, None, config)
    return {"sam": sam.eval(), "untrained": untrained.eval(), "volumes": volumes, "result": result}


TRAINED_TINY_LR = 3e-3
TRAINED_TINY_ITERATIONS = 240
