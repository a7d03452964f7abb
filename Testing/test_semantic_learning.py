"""Tiny semantic models learn brain tissue classes on real data (nilearn's ICBM152 at 2 mm).

Classes: 1 grey matter, 2 white matter, 3 other brain (CSF and the rest of the masked template).
Training uses the axial slabs K 8..30 and 52..74; the score is the per-class Dice on the held-out
slab K 36..45, predicted at full size. A single-class guess cannot pass both the GM and the WM bar
(even the true brain mask filled with one class scores GM 0.68 or WM 0.57, never both), so passing
means the models separate the classes. Measured on 2 CPU cores (torch 2.14, seed 0 as here, and
seed 1): 2D (150 iterations) GM 0.63, WM 0.54; 3D (200 iterations) GM 0.57-0.60, WM 0.40-0.47. The
bars leave a margin below those.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medicosam.models.config import build_sam, get_tiny_config
from medicosam_training.evaluation.metrics import get_semantic_dice
from medicosam_training.semantic import (
    SemanticPatchDataset,
    SemanticSliceDataset,
    SemanticTrainConfig,
    get_case,
    get_semantic_model,
    predict_volume,
    train_semantic,
)

TRAIN_SLABS = [(8, 31), (52, 75)]
TEST_SLAB = (36, 46)


@pytest.fixture(scope="module")
def brain(icbm152):
    t1 = icbm152["t1"]
    labels = np.where(icbm152["gm"], 1, np.where(icbm152["wm"], 2, np.where(t1 > 0, 3, 0)))
    cases = [get_case(t1[a:b], labels[a:b], f"slab {a}") for a, b in TRAIN_SLABS]
    return t1, labels, cases


def _get_test_dice(model, t1, labels):
    a, b = TEST_SLAB
    prediction = predict_volume(model, t1[a - 8:b + 8])[8:-8]  # some context around the slab for 3D windows
    return get_semantic_dice(prediction, labels[a:b], [1, 2, 3])


def test_2d_model_learns_tissue_classes(brain):
    t1, labels, cases = brain
    config = get_tiny_config(128)
    torch.manual_seed(0)
    model = get_semantic_model(build_sam(config), config, 4, 2, decoder_features=8)
    train_semantic(model, SemanticSliceDataset(cases, 128), None,
                   SemanticTrainConfig(iterations=150, batch_size=4, lr=5e-3, val_every=150, device="cpu",
                                       progress=False))
    dice = _get_test_dice(model, t1, labels)
    assert dice[1] > 0.55 and dice[2] > 0.45, dice


def test_3d_model_learns_tissue_classes(brain):
    """3D at 64 px: conv3d is slow on CPUs."""
    t1, labels, cases = brain
    config = get_tiny_config(64)
    torch.manual_seed(0)
    model = get_semantic_model(build_sam(config), config, 4, 3, decoder_features=8, fusion_channels=8,
                               patch_depth=4)
    train_semantic(model, SemanticPatchDataset(cases, 64, 4), None,
                   SemanticTrainConfig(iterations=200, batch_size=2, lr=2e-3, val_every=200, device="cpu",
                                       progress=False))
    dice = _get_test_dice(model, t1, labels)
    assert dice[1] > 0.45 and dice[2] > 0.3, dice
