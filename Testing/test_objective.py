"""Algorithm 1 (medicosam_training.objective) on a tiny real SAM and real MR slices.

The samples are axial slices of nilearn's ICBM152 template at 2 mm (117 x 99 px) with the largest
grey- and white-matter components as objects, zero-padded bottom/right into the tiny model's
256 px input, exactly the layout `medicosam_training.dataset` produces.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List

import numpy as np
import pytest
import torch

from medicosam.errors import DataError, InputError
from medicosam_training.dataset import collate_objects
from medicosam_training.objective import (
    MASK_PROMPT_SCOPES,
    ObjectiveConfig,
    compute_objective,
    get_preset,
    get_soft_dice_loss,
    get_valid_objects,
    sample_box_use,
    sample_mask_prompt_use,
)
from medicosam_training.unetr import get_unetr_decoder

SIZE = 256


def get_brain_samples(icbm152: Dict[str, np.ndarray], slices=range(35, 65, 4), per_tissue: int = 2,
                      min_size: int = 30) -> List[Dict[str, object]]:
    """Dataset items (image (3, 256, 256) float in [0, 255], masks (n, 256, 256) bool) from real slices."""
    from scipy import ndimage

    samples = []
    for k in slices:
        objects = []
        for tissue in ("gm", "wm"):
            labels, n = ndimage.label(icbm152[tissue][k])
            sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
            objects += [labels == i + 1 for i in np.argsort(sizes)[::-1][:per_tissue] if sizes[i] >= min_size]
        h, w = icbm152["t1"][k].shape
        image = np.zeros((3, SIZE, SIZE), np.float32)
        image[:, :h, :w] = icbm152["t1"][k]
        masks = np.zeros((len(objects), SIZE, SIZE), bool)
        masks[:, :h, :w] = np.stack(objects)
        samples.append({"image": torch.from_numpy(image), "masks": torch.from_numpy(masks), "modality": "mr",
                        "source": f"icbm152 axial k={k}"})
    return samples


@pytest.fixture(scope="module")
def brain_batch(icbm152):
    return collate_objects(get_brain_samples(icbm152, slices=(45, 55)))


def _run(sam, batch, config, seed=0, decoder=None, iteration=0):
    return compute_objective(sam, batch["image"], batch["masks"], batch["valid"], config,
                             np.random.default_rng(seed), semantic_decoder=decoder, iteration=iteration)


def test_presets_match_the_paper():
    assert get_preset("medsam") == ObjectiveConfig(n_steps=0, p_box=1.0, p_mask=0.0)
    assert get_preset("simpleft") == ObjectiveConfig(n_steps=0, p_box=0.5, p_mask=0.0)
    assert get_preset("medicosam") == ObjectiveConfig(n_steps=8, p_box=0.5, p_mask=0.5, e_sem=True)
    assert get_preset("medicosam-nomask") == ObjectiveConfig(n_steps=8, p_box=0.5, p_mask=0.0)
    assert get_preset("medicosam", n_steps=7).n_steps == 7
    with pytest.raises(InputError, match="medsam, simpleft, medicosam, medicosam-nomask"):
        get_preset("sam-med2d")
    with pytest.raises(InputError, match="p_box=1.5.*mask_prompt_per='image'"):
        ObjectiveConfig(p_box=1.5, mask_prompt_per="image")


@pytest.mark.parametrize("preset", ["medsam", "simpleft", "medicosam", "medicosam-nomask"])
def test_each_preset_trains_one_step(tiny_sam, brain_batch, preset):
    torch.manual_seed(0)
    config = get_preset(preset)
    decoder = get_unetr_decoder(tiny_sam.image_encoder, initial_features=4) if config.e_sem else None
    modules = [tiny_sam] + ([decoder] if decoder is not None else [])
    parameters = [p for module in modules for p in module.parameters()]
    before = [p.detach().clone() for p in parameters]
    optimizer = torch.optim.AdamW(parameters, lr=1e-3)
    output = _run(tiny_sam.train(), brain_batch, config, decoder=decoder)
    output.loss.backward()
    optimizer.step()

    assert torch.isfinite(output.loss) and output.loss > 0
    assert len(output.steps) == config.n_steps + 1
    assert output.n_objects == int(brain_batch["valid"].sum())
    assert (output.semantic_loss is not None) == config.e_sem
    for part in ("image_encoder", "mask_decoder"):
        changed = [not torch.equal(old, new.detach()) for (name, new), old in
                   zip(tiny_sam.named_parameters(), before) if name.startswith(part)]
        assert any(changed), f"{part} did not change"
    if decoder is not None:
        assert not torch.equal(before[-1], parameters[-1].detach())  # the decoder's out_conv bias learned


def test_prompt_schedule_of_a_real_iteration(tiny_sam, brain_batch):
    config = dataclasses.replace(get_preset("medicosam"), e_sem=False, n_steps=3, points_per_step=2, p_mask=1.0)
    steps = _run(tiny_sam, brain_batch, config, seed=3).steps
    first = steps[0]
    assert first.box.any() and (~first.box).any(), "seed 3 should start some objects from a box, some from a point"
    assert np.array_equal(first.multimask, ~first.box)  # multimask head: a lone point, first pass only
    assert np.array_equal(first.n_positive, (~first.box).astype(int))
    assert not first.n_negative.any() and not first.mask_prompt.any()
    for j, step in enumerate(steps[1:], start=1):
        assert not step.multimask.any()
        assert np.array_equal(step.box, first.box)  # the box stays in the prompt
        assert np.array_equal(step.n_positive, first.n_positive + j * config.points_per_step)
        assert np.array_equal(step.n_negative, np.full(len(first.box), j * config.points_per_step))
        assert step.mask_prompt.all()  # p_mask = 1

    medsam = _run(tiny_sam, brain_batch, get_preset("medsam"), seed=3).steps
    assert len(medsam) == 1 and medsam[0].box.all()
    assert not medsam[0].n_positive.any() and not medsam[0].multimask.any()


def test_prompt_draw_frequencies():
    rng = np.random.default_rng(0)
    draws = 20000
    for p_box in (0.0, 0.3, 1.0):
        config = ObjectiveConfig(p_box=p_box)
        assert sample_box_use(draws, config, rng, 0).mean() == pytest.approx(p_box, abs=0.015)
    for scope in MASK_PROMPT_SCOPES[:2]:
        config = ObjectiveConfig(p_mask=0.5, mask_prompt_per=scope)
        per_step = np.stack([sample_mask_prompt_use(5, config, rng, False) for _ in range(draws // 5)])
        assert per_step.mean() == pytest.approx(0.5, abs=0.02)
        shared = (per_step == per_step[:, :1]).all(axis=1).mean()
        assert shared == (1.0 if scope == "step" else pytest.approx(2 * 0.5 ** 5, abs=0.03))
    iteration_scope = ObjectiveConfig(mask_prompt_per="iteration")
    assert sample_mask_prompt_use(4, iteration_scope, rng, True).all()
    alternate = ObjectiveConfig(prompt_choice="alternate")
    assert [bool(sample_box_use(3, alternate, rng, i).all()) for i in range(4)] == [False, True, False, True]
    batch = ObjectiveConfig(prompt_choice="batch")
    assert all(len(set(sample_box_use(5, batch, rng, 0))) == 1 for _ in range(50))


def test_objects_and_normalisation(tiny_sam, brain_batch):
    valid = torch.tensor([[True, True, True, False], [True, True, False, False]])
    assert get_valid_objects(valid, ObjectiveConfig(n_obj=5)).sum() == 5
    assert get_valid_objects(valid, ObjectiveConfig(n_obj=1)).sum(dim=1).tolist() == [1, 1]
    assert get_valid_objects(valid, ObjectiveConfig(truncate_objects=True)).sum(dim=1).tolist() == [2, 2]

    config = get_preset("medsam")
    mean = _run(tiny_sam, brain_batch, config).loss
    total = _run(tiny_sam, brain_batch, dataclasses.replace(config, normalise_by_batch=False)).loss
    assert float(total.detach()) == pytest.approx(2 * float(mean.detach()), rel=1e-5)

    perfect = torch.zeros(1, 8, 8)
    perfect[0, 2:5, 2:5] = 1
    assert float(get_soft_dice_loss(perfect, perfect)) == pytest.approx(0.0)
    assert float(get_soft_dice_loss(perfect, perfect.roll(4, dims=1))) == pytest.approx(1.0)

    with pytest.raises(InputError, match="no semantic decoder"):
        _run(tiny_sam, brain_batch, get_preset("medicosam"))
    empty = dict(brain_batch, valid=torch.zeros_like(brain_batch["valid"]))
    with pytest.raises(DataError, match="no object"):
        _run(tiny_sam, empty, config)


def test_unetr_decoder_layout(tiny_sam):
    decoder = get_unetr_decoder(tiny_sam.image_encoder, out_channels=2, initial_features=4)
    keys = set(decoder.state_dict())
    for key in ("deconv1.block.0.conv.weight", "deconv1.block.1.block.weight", "deconv4.block.2.running_mean",
                "base.block.1.weight", "decoder.blocks.2.block.4.weight", "decoder.samplers.0.conv.weight",
                "deconv_out.conv.weight", "decoder_head.block.1.weight", "out_conv.weight"):
        assert key in keys, key
    # micro-sam's skip quirk: the 32-channel z9 is centre-cropped to 16 channels before the concat.
    assert decoder.decoder.blocks[0].block[1].in_channels == 32
    features = torch.randn(2, 64, 16, 16)
    assert decoder(features).shape == (2, 2, SIZE, SIZE)


def test_backward_pass_by_pass_gives_the_gradients_of_one_backward(tiny_sam, brain_batch):
    """`backward=True` (the trainer's single-process path: one decoder pass's activations in memory): the
    loss and the gradients of backpropagating the returned loss once, decoder passes, encoder and e_sem."""
    import copy

    torch.manual_seed(0)
    decoder = get_unetr_decoder(tiny_sam.image_encoder, initial_features=4)
    twin, twin_decoder = copy.deepcopy(tiny_sam), copy.deepcopy(decoder)
    config = get_preset("medicosam", n_steps=2)
    once = _run(tiny_sam, brain_batch, config, decoder=decoder)
    once.loss.backward()
    streamed = compute_objective(twin, brain_batch["image"], brain_batch["masks"], brain_batch["valid"], config,
                                 np.random.default_rng(0), semantic_decoder=twin_decoder, backward=True)
    assert not streamed.loss.requires_grad
    assert float(streamed.loss) == pytest.approx(float(once.loss), rel=1e-6)
    pairs = list(zip(tiny_sam.named_parameters(), twin.parameters())) + list(
        zip(decoder.named_parameters(), twin_decoder.parameters()))
    for (name, expected), got in pairs:
        if expected.grad is None:
            assert got.grad is None, name
        else:
            torch.testing.assert_close(got.grad, expected.grad, rtol=1e-4, atol=1e-7, msg=name)
    encoder_grads = [p.grad for p in twin.image_encoder.parameters() if p.grad is not None]
    assert encoder_grads and any(bool(g.abs().sum() > 0) for g in encoder_grads)
