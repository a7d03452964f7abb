"""It learns, on real weights: the MedicoSAM objective teaches LiteMedSAM, a box-trained medical SAM, to
segment from a point and to take correction clicks, on slices training never saw.

Training sees axial ICBM152 slices (2 mm, tissue components); the test slices are other: BrainWeb's T1
and PD slices (another brain, another modality) with the lateral ventricle (a structure no training
here labels), and coronal ICBM152 slices. LiteMedSAM shows the paper's MedSAM failure there: a lone point
gives empty masks (Dice 0.01) and 7 correction clicks drop its box Dice from 0.54 to 0.19 (the previous
logits fed back). 20 iterations of the family's recipe (docs/training.md, "LiteMedSAM") measured: point
it0 0.01 -> 0.28, point it7 0.21 -> 0.45, box it0 0.54 -> 0.65, box it7 0.19 -> 0.50. The bars below are
far from both ends, so another CPU's rounding cannot cross them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medicosam_training.demo import get_brain_volumes, get_evaluation_sets, write_training_data
from medicosam_training.evaluation.interactive_2d import Interactive2DConfig, evaluate_interactive_2d

ITERATIONS = 20
CORRECTIONS = 7


def _get_dice(loaded, samples) -> dict:
    """Mean Dice per start at the first prompt (it0) and after the corrections (it7), logits fed back."""
    run = evaluate_interactive_2d(loaded, samples, Interactive2DConfig(n_corrections=CORRECTIONS,
                                                                       use_mask_prompt=True, seed=0),
                                  show_progress=False)
    found = {}
    for row in run.rows:
        if int(row["iteration"]) in (0, CORRECTIONS):
            found.setdefault(f"{row['start']} it{row['iteration']}", []).append(row["dice"])
    return {key: float(np.mean(values)) for key, values in found.items()}


@pytest.mark.slow
def test_the_medicosam_objective_teaches_litemedsam_points_and_corrections(lite_cache, tmp_path):
    from medicosam.models.checkpoint import load_sam
    from medicosam.preprocessing import get_input_transform
    from medicosam_training.dataset import FolderDataset2D
    from medicosam_training.objective import get_preset
    from medicosam_training.trainer import TrainConfig, train

    volumes = get_brain_volumes()
    data = write_training_data(tmp_path / "data", volumes, 0, seed=0)
    loaded = load_sam(lite_cache / "litemedsam.pth")
    dataset = FolderDataset2D(data / "images", data / "labels", image_size=get_input_transform(loaded.sam),
                              n_obj=5, min_size=25, label_mode="semantic", seed=0)
    samples = [sample for group in get_evaluation_sets(volumes).values() for sample in group]
    before = _get_dice(loaded, samples)
    torch.manual_seed(0)
    train(loaded, dataset, None, TrainConfig(objective=get_preset("medicosam"), iterations=ITERATIONS,
                                             out_dir=tmp_path / "run", progress=False))
    after = _get_dice(loaded.sam.eval(), samples)
    assert before["box it7"] < before["box it0"] - 0.2, before  # the failure the paper describes
    assert after["point it0"] >= before["point it0"] + 0.12, (before, after)
    assert after["box it7"] >= before["box it7"] + 0.15, (before, after)
    assert after["point it7"] >= before["point it7"] + 0.1, (before, after)
    assert after["box it0"] >= before["box it0"] - 0.03, (before, after)
