"""Golden checks: the "one house" redesign (issue 14) changed no result.

`golden/redesign_e17093b.npz` was recorded at commit e17093b, before the redesign, with the same
calls as below: masks of a seeded tiny SAM on a real MR slice (nilearn's ICBM152 T1) for a point,
a box and points + box, on the official fp32 path and on the fast path; a propagation from a real
white-matter seed; and the loss trace and final weight norm of a seeded 4-iteration training run.
The official path must give the same masks to the pixel; the fast path (SDPA, bf16 cache) and the
training trace are allowed float-rounding noise only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_objective import get_brain_samples

from medicosam.models.config import build_sam, get_tiny_config
from medicosam.predictor import VolumePredictor, get_speed_options
from medicosam.prompts import Prompts
from medicosam.propagation import PropagationConfig
from medicosam_training.objective import get_preset
from medicosam_training.trainer import TrainConfig, train

GOLDEN = Path(__file__).parent / "golden" / "redesign_e17093b.npz"
SLICE = 45
BOX = np.array([20.0, 25.0, 70.0, 85.0])
PROMPTS = {
    "point": Prompts(points=np.array([[45.0, 55.0]]), labels=np.array([1])),
    "box": Prompts(box=BOX),
    "points_box": Prompts(points=np.array([[45.0, 55.0], [30.0, 40.0]]), labels=np.array([1, 0]), box=BOX),
}


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(GOLDEN))


def _get_mask(golden, name: str, shape) -> np.ndarray:
    return np.unpackbits(golden[name], count=int(np.prod(shape))).reshape(shape).astype(bool)


@pytest.fixture(scope="module")
def seeded_sam():
    torch.manual_seed(0)
    return build_sam(get_tiny_config()).eval()


def test_masks_from_prompts_are_unchanged(golden, seeded_sam, icbm152):
    volume = icbm152["t1"]
    official = VolumePredictor(seeded_sam, volume)
    fast = VolumePredictor(seeded_sam, volume, **get_speed_options(True))
    shape = volume.shape[1:]
    for name, prompts in PROMPTS.items():
        assert np.array_equal(official.predict_mask(0, SLICE, prompts), _get_mask(golden, f"mask_{name}", shape)), name
        fast_mask = fast.predict_mask(0, SLICE, prompts)
        assert np.count_nonzero(fast_mask != _get_mask(golden, f"fast_mask_{name}", shape)) <= 0.002 * fast_mask.size


def test_propagation_is_unchanged(golden, seeded_sam, icbm152):
    volume = icbm152["t1"]
    predictor = VolumePredictor(seeded_sam, volume)
    result = predictor.propagate(0, {SLICE: icbm152["wm"][SLICE]},
                                 PropagationConfig(iou_threshold=0.0, max_slices=3))
    assert sorted(result.masks) == list(range(SLICE - 3, SLICE + 4))
    for index in (42, 43, 44, 46, 47, 48):
        assert np.array_equal(result.masks[index], _get_mask(golden, f"propagated_{index}", volume.shape[1:])), index


def test_training_loss_trace_is_unchanged(golden, icbm152, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    samples = get_brain_samples(icbm152)
    torch.manual_seed(0)
    sam = build_sam(get_tiny_config())
    config = TrainConfig(objective=get_preset("medicosam-nomask", n_steps=2), lr=1e-4, out_dir=tmp_path / "run",
                         progress=False, iterations=4, batch_size=2, log_every=1, amp="off")
    train(sam, samples[:4], None, config)
    events = EventAccumulator(str(tmp_path / "run" / "logs"))
    events.Reload()
    loss = [event.value for event in events.Scalars("train/loss")]
    np.testing.assert_allclose(loss, golden["loss"], rtol=1e-4)
    norm = float(sum(p.detach().double().norm() ** 2 for p in sam.parameters()) ** 0.5)
    np.testing.assert_allclose(norm, golden["weights_norm"][0], rtol=1e-5)
