"""SAM2 as a MedicoSAM model: real `sam2` models (reduced sizes, seeded weights) against sam2's own predictors."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sam2", reason="the [sam2] extra (.ci/setup installs it)")

from medicosam.errors import ModelError  # noqa: E402
from medicosam.prompts import Prompts  # noqa: E402


@pytest.fixture(scope="module")
def sam2_checkpoint(tmp_path_factory):
    import torch

    from medicosam.sam2_models import build_sam2_model, export_sam2, get_reduced_config

    torch.manual_seed(0)
    config = get_reduced_config()
    path = tmp_path_factory.mktemp("sam2") / "sam2_tiny.pt"
    export_sam2(build_sam2_model(config), config, path)
    return path, config


@pytest.fixture(scope="module")
def loaded(sam2_checkpoint):
    from medicosam.models.checkpoint import load_sam

    return load_sam(sam2_checkpoint[0], allow_custom=True)


def _reference_overrides(config):
    """The sizes as sam2's own builders take them (they add the class and post-processing themselves)."""
    from medicosam.sam2_models import _POSTPROCESSING

    return config.get_overrides()[1 + len(_POSTPROCESSING):]


def test_load_sam_returns_a_sam2_model(loaded, sam2_checkpoint):
    assert loaded.family.name == "sam2" and loaded.config.image_size == 256
    assert type(loaded.sam2).__name__ == "SAM2VideoPredictor"


@pytest.mark.parametrize("prompt", [
    Prompts(points=np.array([[40.0, 55.0]]), labels=np.array([1])),
    Prompts(box=np.array([25.0, 30.0, 70.0, 80.0], np.float32)),
    Prompts(points=np.array([[40.0, 55.0], [60.0, 40.0]]), labels=np.array([1, 0]),
            box=np.array([25.0, 30.0, 70.0, 80.0], np.float32)),
], ids=["point", "box", "points+box"])
def test_slice_masks_equal_sam2_image_predictor(loaded, sam2_checkpoint, icbm152, prompt):
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from medicosam.predictor import get_volume_predictor

    path, config = sam2_checkpoint
    volume = icbm152["t1"][40:43]
    ours = get_volume_predictor(loaded, volume).predict(0, 1, prompt)
    reference = SAM2ImagePredictor(build_sam2(config.config_file, str(path), device="cpu",
                                              hydra_overrides_extra=_reference_overrides(config)))
    reference._bb_feat_sizes = [(64, 64), (32, 32), (16, 16)]
    reference.set_image(get_volume_predictor(loaded, volume).window.apply(volume[1]))
    masks, scores, _ = reference.predict(
        point_coords=prompt.points if len(prompt.points) else None,
        point_labels=prompt.labels if len(prompt.points) else None, box=prompt.box,
        multimask_output=prompt.box is None and len(prompt.points) == 1)
    expected = masks[int(np.argmax(scores))] > 0.5
    assert expected.any() and np.array_equal(ours.masks[0], expected)


def test_video_engine_equals_sam2_video_predictor(loaded, sam2_checkpoint, icbm152, tmp_path):
    """Both directions from a seed; sam2 reads the same frames from a JPEG folder, as it expects."""
    from PIL import Image
    from sam2.build_sam import build_sam2_video_predictor

    from medicosam.normalization import get_intensity_window
    from medicosam.predictor import get_volume_predictor
    from medicosam.sam2_predictor import get_memory_window

    path, config = sam2_checkpoint
    volume = icbm152["t1"][20:70]  # longer than twice SAM2's memory window: old frames' memory is dropped
    window = get_intensity_window(volume, "auto")
    for k, image in enumerate(volume):
        Image.fromarray(window.apply(image)).save(tmp_path / f"{k:05d}.jpg", quality=95)
    frames = np.stack([np.asarray(Image.open(tmp_path / f"{k:05d}.jpg").convert("RGB")) for k in range(len(volume))])
    ours = get_volume_predictor(loaded, frames)
    seed_index = 24
    seed = ours.predict_mask(0, seed_index, Prompts(points=np.array([[45.0, 55.0]]), labels=np.array([1])))
    steps = []
    result = ours.propagate(0, {seed_index: seed}, progress=lambda done, total: steps.append((done, total)))

    reference = build_sam2_video_predictor(config.config_file, str(path), device="cpu",
                                           hydra_overrides_extra=_reference_overrides(config))
    state = reference.init_state(str(tmp_path))
    reference.add_new_mask(state, frame_idx=seed_index, obj_id=1, mask=seed)
    expected = {seed_index: seed}
    for reverse, count in ((False, len(volume) - 1 - seed_index), (True, seed_index)):
        for index, _, logits in reference.propagate_in_video(state, start_frame_idx=seed_index,
                                                             max_frame_num_to_track=count, reverse=reverse):
            if index == seed_index:  # the seed is kept as given, as in SAM propagation
                continue
            mask = (logits[0, 0] > 0).numpy()
            if not mask.any():
                break
            expected[index] = mask
    assert sorted(result.masks) == sorted(expected) and len(expected) > 2 * get_memory_window(loaded.sam2)
    assert all(np.array_equal(result.masks[i], expected[i]) for i in expected)
    assert steps[-1][0] == steps[-1][1] == len(volume) - 1


def test_video_engine_limits_and_cancel(loaded, icbm152):
    from medicosam.predictor import get_volume_predictor
    from medicosam.propagation import PropagationConfig, StopReason

    predictor = get_volume_predictor(loaded, icbm152["t1"][38:48])
    seed = predictor.predict_mask(0, 4, Prompts(points=np.array([[45.0, 55.0]]), labels=np.array([1])))
    result = predictor.propagate(0, {4: seed}, PropagationConfig(direction="up", max_slices=2))
    assert sorted(result.masks) == [4, 5, 6] and result.reasons["down"] == StopReason.NOT_REQUESTED
    assert result.reasons["up"] == StopReason.MAX_SLICES and result.stopped_at["up"] == 7
    calls = []
    cancelled = predictor.propagate(0, {4: seed}, should_cancel=lambda: len(calls) > 1 or calls.append(1))
    assert cancelled.cancelled and len(cancelled.masks) <= 3


def test_segment_command_propagates_with_sam2(sam2_checkpoint, tmp_path):
    import SimpleITK as sitk

    from medicosam.cli import main
    from medicosam_training.sample_data import get_nilearn_icbm152

    image = sitk.ReadImage(str(get_nilearn_icbm152("t1")))[::3, ::3, ::3]
    source, out = tmp_path / "t1.nii.gz", tmp_path / "mask.nii.gz"
    sitk.WriteImage(image, str(source))
    assert main(["segment", str(source), "--checkpoint", str(sam2_checkpoint[0]), "--allow-custom", "--out", str(out),
                 "--point", "0,-20,10", "--propagate", "--max-slices", "3", "--no-fast"]) == 0
    mask = sitk.ReadImage(str(out))
    assert mask.GetSize() == image.GetSize() and np.allclose(mask.GetOrigin(), image.GetOrigin())
    assert sitk.GetArrayFromImage(mask).any(axis=(1, 2)).sum() >= 2


def test_bad_sam2_checkpoints(sam2_checkpoint, tmp_path):
    import torch

    from medicosam.models.checkpoint import load_sam

    path, _ = sam2_checkpoint
    obj = torch.load(path, weights_only=True)
    assert load_sam(path).family.name == "sam2"  # reduced, but marked MedicoSAM's by export_sam2: no allow_custom
    state = dict(obj["model"])
    state.pop("sam_mask_decoder.iou_token.weight")
    torch.save({**obj, "model": state}, tmp_path / "missing.pt")
    with pytest.raises(ModelError, match="1 missing keys: sam_mask_decoder.iou_token.weight"):
        load_sam(tmp_path / "missing.pt", allow_custom=True)
    torch.save({**obj, "medicosam": {"_target_": 1}}, tmp_path / "target.pt")
    with pytest.raises(ModelError, match="not allowed"):
        load_sam(tmp_path / "target.pt", allow_custom=True)
    torch.save({"model": {k: v for k, v in obj["model"].items() if not k.startswith("image_encoder.trunk.blocks.4")}},
               tmp_path / "unofficial.pt")
    with pytest.raises(ModelError, match="none of the official SAM2.1 sizes"):
        load_sam(tmp_path / "unofficial.pt")


def test_evaluate_interactive_3d_with_sam_and_sam2(sam2_checkpoint, tiny_checkpoint, icbm152, tmp_path):
    import SimpleITK as sitk

    from medicosam.cli import main

    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    image, label = icbm152["t1"][36:46, 10:90, 10:80], icbm152["wm"][36:46, 10:90, 10:80].astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(image), str(tmp_path / "images" / "brain.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(label), str(tmp_path / "labels" / "brain.nii.gz"))
    assert main(["evaluate", "interactive-3d", "--images", str(tmp_path / "images"), "--labels",
                 str(tmp_path / "labels"), "--out", str(tmp_path / "out"), "--model", f"sam={tiny_checkpoint}",
                 "--model", f"sam2={sam2_checkpoint[0]}", "--starts", "point", "--quiet"]) == 0
    summary = (tmp_path / "out" / "summary_3d.md").read_text()
    assert "| sam2 |" in summary and "| sam |" in summary
    assert "native propagation, no grid search" in summary and "prompt propagation" in summary



def test_the_server_serves_a_sam2_model_with_the_local_masks(sam2_checkpoint, icbm152, tmp_path):
    """Every family is served: a SAM2 model's masks over HTTP equal its local engine's, and its video
    propagation (which returns its masks at the end, not slice by slice) still streams every slice."""
    from helpers_server import TOKEN, Server

    from medicosam.client import RemotePredictor, ServerClient
    from medicosam.models.checkpoint import load_sam
    from medicosam.predictor import get_volume_predictor
    from medicosam.propagation import PropagationConfig

    volume = icbm152["t1"][40:46]
    server = Server(sam2_checkpoint[0], None, "--no-fast", log=tmp_path / "server.log").start()
    try:
        client = ServerClient(server.url, TOKEN)
        assert client.get_model()["family"] == "sam2"
        remote = RemotePredictor(client, volume, fast=False)
        local = get_volume_predictor(load_sam(str(sam2_checkpoint[0])), volume)
        prompt = Prompts(np.array([[50.0, 58.0]]), np.array([1]))
        assert np.array_equal(remote.predict(0, 2, prompt).masks, local.predict(0, 2, prompt).masks)
        seed = {2: local.predict_mask(0, 2, prompt)}
        config = PropagationConfig(max_slices=2)
        ours, theirs = remote.propagate(0, seed, config), local.propagate(0, seed, config)
        assert sorted(ours.masks) == sorted(theirs.masks) and len(ours.masks) > 1
        assert all(np.array_equal(ours.masks[k], theirs.masks[k]) for k in ours.masks)
    finally:
        server.kill()
def test_a_size_record_larger_than_its_weights_is_refused_before_anything_is_built(sam2_checkpoint, tmp_path):
    import os
    import subprocess
    import sys

    import torch

    from medicosam.models.checkpoint import load_sam

    path, _ = sam2_checkpoint
    obj = torch.load(path, weights_only=True)
    record = {"image_encoder.trunk.embed_dim": 512, "image_encoder.trunk.stages": [2, 4, 8, 2],
              "image_encoder.neck.backbone_channel_list": [4096, 2048, 1024, 512]}  # 860 M parameters, 3.4 GB
    torch.save({**obj, "medicosam": {**obj["medicosam"], **record}}, tmp_path / "big.pt")
    # The loader's own peak memory: VmHWM of its process (ru_maxrss would keep the forking parent's).
    script = ("import sys\n"
              "from medicosam.errors import ModelError\n"
              "from medicosam.models.checkpoint import load_sam\n"
              "try:\n"
              "    load_sam(sys.argv[1], allow_custom=True)\n"
              "except ModelError as error:\n"
              "    print(error)\n"
              "status = open('/proc/self/status').read()\n"
              "print('peak MB', int(status.split('VmHWM:')[1].split()[0]) // 1024)\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "big.pt")], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cannot be loaded as a SAM2 model" in done.stdout and "tensors of unexpected shape" in done.stdout
    assert int(done.stdout.split("peak MB")[1]) < 1500  # the old loader built all 3.4 GB, then refused it
    for bad in ({"image_encoder.trunk.stages": [1] * 5000}, {"image_encoder.trunk.embed_dim": [32, 32]},
                {"memory_attention.num_layers": [1]}):
        torch.save({**obj, "medicosam": {**obj["medicosam"], **bad}}, tmp_path / "bad.pt")
        with pytest.raises(ModelError, match="is not allowed"):
            load_sam(tmp_path / "bad.pt", allow_custom=True)
