"""It learns, on real weights: the MedicoSAM objective teaches LiteMedSAM, a box-trained medical SAM, to
segment from one point, on slices training never saw.

Training sees axial ICBM152 slices (2 mm, tissue components); the test slices are other: BrainWeb's T1
and PD slices (another brain, another modality) with the lateral ventricle (a structure no training
here labels), and coronal ICBM152 slices. LiteMedSAM from one point gives nearly empty masks there
(mean Dice ~0.01, docs/evaluation.md); the bar below is far from both that and what the finetune reaches
(docs/training.md), so another CPU's rounding cannot cross it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medicosam_training.demo import get_brain_volumes, get_brainweb_samples, get_coronal_samples, write_training_data
from medicosam_training.evaluation.interactive_2d import Interactive2DConfig, evaluate_interactive_2d

ITERATIONS = 20


def _get_point_dice(loaded, samples) -> float:
    run = evaluate_interactive_2d(loaded, samples, Interactive2DConfig(n_corrections=0, seed=0), starts=("point",),
                                  show_progress=False)
    return float(np.mean([row["dice"] for row in run.rows]))


@pytest.mark.slow
def test_the_medicosam_objective_teaches_litemedsam_to_segment_from_a_point(lite_cache, tmp_path):
    from medicosam.models.checkpoint import load_sam
    from medicosam_training.dataset import FolderDataset2D
    from medicosam_training.objective import get_preset
    from medicosam_training.trainer import TrainConfig, train

    volumes = get_brain_volumes()
    data = write_training_data(tmp_path / "data", volumes, 0, seed=0)
    loaded = load_sam(lite_cache / "litemedsam.pth")
    dataset = FolderDataset2D(data / "images", data / "labels", image_size=256, n_obj=5, min_size=25,
                              label_mode="semantic", seed=0)
    samples = get_brainweb_samples() + get_coronal_samples(volumes, step=20)
    before = _get_point_dice(loaded, samples)
    torch.manual_seed(0)
    train(loaded, dataset, None, TrainConfig(objective=get_preset("medicosam"), iterations=ITERATIONS,
                                             out_dir=tmp_path / "run", progress=False))
    after = _get_point_dice(loaded.sam.eval(), samples)
    assert before < 0.05, before
    assert after >= before + 0.1, (before, after)
