"""The trainer: validation, export, resume after SIGKILL, failed saves, NaN guard, DDP, CLI.

Tiny real SAM models train on real MR slices (see test_objective.get_brain_samples); the
kill / DDP tests run real subprocesses (a training script, torchrun with two gloo ranks).
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything.modeling.image_encoder import Attention as EncoderAttention
from test_objective import get_brain_samples

from medicosam.acceleration import FastEncoderAttention, fast_attention, is_fast_attention
from medicosam.atomic import get_stale_temporaries
from medicosam.device import get_autocast_dtype, get_cpu_budget
from medicosam.errors import InputError, RunError
from medicosam.models.config import build_sam, get_tiny_config
from medicosam_training.configs import RESUMABLE_CHANGES, TrainConfig
from medicosam_training.objective import compute_objective, get_preset
from medicosam_training.runtime import get_amp_dtype, get_loader_options
from medicosam_training.trainer import (
    CHECKPOINT_NAME,
    activation_checkpointing,
    load_training_checkpoint,
    train,
)

FAST = get_preset("medicosam-nomask", n_steps=2)

# A training run in its own process: argv = samples file, out dir, [extra TrainConfig fields as k=v].
_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    torch.set_num_threads(1)
    from medicosam.models.config import build_sam, get_tiny_config
    from medicosam_training.configs import TrainConfig
    from medicosam_training.objective import get_preset
    from medicosam_training.trainer import train

    samples = torch.load(sys.argv[1], weights_only=True)
    rank = int(os.environ.get("RANK", "0"))
    torch.manual_seed(rank)  # different weights per rank: DDP must broadcast rank 0's
    sam = build_sam(get_tiny_config())
    extra = {k: int(v) for k, v in (arg.split("=") for arg in sys.argv[3:])}
    config = TrainConfig(objective=get_preset("medicosam-nomask", n_steps=2), lr=1e-4, out_dir=sys.argv[2],
                         progress=False, **extra)
    result = train(sam, samples, None, config)
    torch.save(sam.state_dict(), os.path.join(sys.argv[2], f"rank{rank}.pt"))
""")


@pytest.fixture(scope="module")
def brain_samples(icbm152):
    return get_brain_samples(icbm152)  # 8 slices, 2-4 objects each


def _get_config(tmp_path: Path, **fields) -> TrainConfig:
    base = dict(objective=FAST, lr=1e-4, out_dir=tmp_path / "run", progress=False)
    return TrainConfig(**{**base, **fields})


def _get_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _write_script(tmp_path: Path, samples) -> tuple:
    torch.save(samples, tmp_path / "samples.pt")
    (tmp_path / "train_script.py").write_text(_SCRIPT)
    return str(tmp_path / "train_script.py"), str(tmp_path / "samples.pt")


def test_train_validates_decays_logs_and_exports(brain_samples, tmp_path):
    from segment_anything import SamPredictor

    from medicosam.cli import main
    from medicosam.models.checkpoint import load_sam

    torch.manual_seed(0)
    sam = build_sam(get_tiny_config())
    config = _get_config(tmp_path, objective=get_preset("medicosam", n_steps=1), decoder_features=4,
                         epochs=2, batch_size=2)
    result = train(sam, brain_samples[:4], brain_samples[4:6], config)

    assert (result.start_iteration, result.iteration, result.epoch) == (0, 4, 2)
    assert [entry["epoch"] for entry in result.validation] == [0, 1]
    assert all(0.0 <= entry["dice"] <= 1.0 and np.isfinite(entry["loss"]) for entry in result.validation)
    state = load_training_checkpoint(result.checkpoint)
    assert state["iteration"] == 4 and state["objective"]["n_steps"] == 1
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4 * 0.9 ** 2)
    assert list((result.out_dir / "logs").glob("events.out.tfevents.*"))

    # The export is a plain SAM state dict: strict load into the segment_anything classes, same masks.
    fresh = build_sam(get_tiny_config())
    fresh.load_state_dict(torch.load(result.export, weights_only=True), strict=True)
    image = brain_samples[6]["image"].permute(1, 2, 0).numpy().astype(np.uint8)
    masks = []
    for model in (sam, fresh):
        predictor = SamPredictor(model)
        predictor.set_image(image)
        masks.append(predictor.predict(point_coords=np.array([[50.0, 60.0]]), point_labels=np.array([1]))[0])
    assert np.array_equal(masks[0], masks[1])

    joint = load_sam(result.joint_export, allow_custom=True)
    assert joint.decoder_state is not None and "out_conv.weight" in joint.decoder_state
    for args, path in ((["export", str(result.checkpoint), str(tmp_path / "cli.pt")], tmp_path / "cli.pt"),
                       (["export", str(result.checkpoint), str(tmp_path / "cli_joint.pt"), "--with-decoder"],
                        tmp_path / "cli_joint.pt")):
        assert main(args) == 0 and path.is_file()
    exported = torch.load(tmp_path / "cli.pt", weights_only=True)
    assert all(torch.equal(exported[key], value) for key, value in sam.state_dict().items())


def test_sigkill_mid_epoch_then_resume(brain_samples, tmp_path):
    brain_samples = brain_samples * 2  # 16 iterations per epoch: the kill lands well inside the first
    script, samples_file = _write_script(tmp_path, brain_samples)
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, script, samples_file, str(out), "epochs=1000", "save_every=1",
                                "batch_size=1"], env=_get_env(), stderr=subprocess.PIPE)
    checkpoint = out / CHECKPOINT_NAME
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if checkpoint.exists() and load_training_checkpoint(checkpoint)["iteration"] >= 2:
                break
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    state = load_training_checkpoint(checkpoint)  # loads: the kill left no torn file behind
    killed_at = state["iteration"]
    assert killed_at >= 2 and 0 < state["epoch_batches"] < len(brain_samples)

    config = _get_config(tmp_path, batch_size=1, save_every=1, iterations=killed_at + 2, resume=True)
    resumed = build_sam(get_tiny_config())
    result = train(resumed, brain_samples, None, config)
    assert (result.start_iteration, result.iteration) == (killed_at, killed_at + 2)
    assert load_training_checkpoint(checkpoint)["iteration"] == killed_at + 2
    assert not list(out.glob(f".{CHECKPOINT_NAME}.*")), "temporary files of the killed save were not removed"

    # The resumed run ends where an uninterrupted one does: same batches, prompts, optimizer state.
    torch.manual_seed(0)
    uninterrupted = build_sam(get_tiny_config())
    train(uninterrupted, brain_samples, None, dataclasses.replace(config, out_dir=tmp_path / "straight",
                                                                   resume=False))
    for (key, value), other in zip(resumed.state_dict().items(), uninterrupted.state_dict().values()):
        torch.testing.assert_close(value, other, rtol=1e-4, atol=1e-6, msg=key)


def test_resume_refuses_other_settings_and_allows_the_listed_ones(brain_samples, tmp_path):
    config = _get_config(tmp_path, iterations=1, batch_size=2)
    train(build_sam(get_tiny_config()), brain_samples[:4], None, config)
    for change, named in ((dict(lr=1e-3), "lr: 0.0001 -> 0.001"), (dict(batch_size=1), "batch_size: 2 -> 1"),
                          (dict(seed=1), "seed: 0 -> 1"),
                          (dict(objective=get_preset("medsam")), "objective.n_steps: 2 -> 0")):
        with pytest.raises(InputError, match="was trained with other settings") as raised:
            train(build_sam(get_tiny_config()), brain_samples[:4], None,
                  dataclasses.replace(config, iterations=2, resume=True, **change))
        assert named in str(raised.value) and "\n" not in str(raised.value)
    assert load_training_checkpoint(Path(config.out_dir) / CHECKPOINT_NAME)["iteration"] == 1  # nothing ran

    allowed = dict(iterations=2, save_every=5, log_every=3, num_workers=0, device="cpu", progress=True)
    assert set(allowed) <= set(RESUMABLE_CHANGES)
    result = train(build_sam(get_tiny_config()), brain_samples[:4], None,
                   dataclasses.replace(config, resume=True, **allowed))
    assert (result.start_iteration, result.iteration) == (1, 2)


def test_failed_save_keeps_previous_checkpoint(brain_samples, tmp_path, monkeypatch):
    config = _get_config(tmp_path, iterations=2, save_every=1)
    train(build_sam(get_tiny_config()), brain_samples, None, config)
    checkpoint = Path(config.out_dir) / CHECKPOINT_NAME
    before = checkpoint.read_bytes()

    def save_half_then_fail(obj, f, *args, **kwargs):
        f.write(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(RunError, match=r"disk full: the checkpoint of iteration 3 does not fit in .* MB free there\); "
                                       r"the last good checkpoint .*latest.pt \(iteration 2\) was kept"):
        train(build_sam(get_tiny_config()), brain_samples, None,
              dataclasses.replace(config, iterations=3, resume=True))
    monkeypatch.undo()
    assert checkpoint.read_bytes() == before
    assert load_training_checkpoint(checkpoint)["iteration"] == 2
    assert not get_stale_temporaries(checkpoint)


def test_nan_guard_stops_without_saving(brain_samples, tmp_path):
    config = _get_config(tmp_path, iterations=1)
    train(build_sam(get_tiny_config()), brain_samples, None, config)
    checkpoint, export = Path(config.out_dir) / CHECKPOINT_NAME, Path(config.out_dir) / "model.pt"
    before, exported = checkpoint.read_bytes(), export.read_bytes()
    poisoned = [dict(sample, image=torch.full_like(sample["image"], float("nan"))) for sample in brain_samples]
    with pytest.raises(RunError, match=r"loss is not finite .* at iteration 2; the last good checkpoint"):
        train(build_sam(get_tiny_config()), poisoned, None, dataclasses.replace(config, iterations=5, resume=True))
    assert checkpoint.read_bytes() == before and export.read_bytes() == exported

    diverging = _get_config(tmp_path, out_dir=tmp_path / "diverging", lr=1e10, iterations=6)
    with pytest.raises(RunError, match="Lower the learning rate"):
        train(build_sam(get_tiny_config()), brain_samples, None, diverging)
    assert not list((tmp_path / "diverging").glob("*.pt"))


def test_ddp_two_cpu_processes_end_with_identical_weights(brain_samples, tmp_path):
    script, samples_file = _write_script(tmp_path, brain_samples)
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script,
               samples_file, str(out), "iterations=2", "batch_size=1"]
    finished = subprocess.run(command, env=_get_env(), capture_output=True, timeout=300)
    assert finished.returncode == 0, finished.stderr.decode()[-3000:]
    ranks = [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    torch.manual_seed(1)
    rank1_init = build_sam(get_tiny_config()).state_dict()
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key
    assert not torch.equal(ranks[1]["mask_decoder.iou_token.weight"], rank1_init["mask_decoder.iou_token.weight"])
    assert load_training_checkpoint(out / CHECKPOINT_NAME)["iteration"] == 2
    assert (out / "model.pt").is_file()


@pytest.mark.parametrize("switch", ["activation_checkpointing", "fast_attention"])
def test_speed_switches_give_the_same_loss_and_gradients(tiny_sam, brain_samples, switch):
    from medicosam_training.dataset import collate_objects

    contexts = {"activation_checkpointing": lambda on: activation_checkpointing(tiny_sam.image_encoder, on),
                "fast_attention": lambda on: fast_attention(tiny_sam, on)}
    batch = collate_objects(brain_samples[:2])
    keys = list(tiny_sam.state_dict())
    losses, gradients = [], []
    for enabled in (False, True):
        tiny_sam.zero_grad()
        with contexts[switch](enabled):
            output = compute_objective(tiny_sam, batch["image"], batch["masks"], batch["valid"], FAST,
                                       np.random.default_rng(0))
            output.loss.backward()
            assert list(tiny_sam.state_dict()) == keys
        losses.append(output.loss.detach())
        gradients.append({name: p.grad.clone() for name, p in tiny_sam.named_parameters() if p.grad is not None})
    assert all("forward" not in vars(block) for block in tiny_sam.image_encoder.blocks)
    assert not is_fast_attention(tiny_sam)  # the model is left as it was found
    torch.testing.assert_close(losses[0], losses[1])
    assert gradients[0].keys() == gradients[1].keys()
    for name, plain in gradients[0].items():
        torch.testing.assert_close(plain, gradients[1][name], atol=1e-6, rtol=1e-4)


def test_training_attention_choice(brain_samples, tmp_path):
    seen = []
    for enabled in (True, None):  # None: SDPA on CUDA only, so official attention here
        sam = build_sam(get_tiny_config())
        attention = sam.image_encoder.blocks[0].attn
        hook = attention.register_forward_pre_hook(lambda module, args, on=enabled: seen.append((on, type(module))))
        train(sam, brain_samples[:2], None, _get_config(tmp_path / str(enabled), iterations=1,
                                                           fast_attention=enabled))
        hook.remove()
        assert type(attention) is EncoderAttention  # official again after training
    assert {kind for on, kind in seen if on} == {FastEncoderAttention}
    assert {kind for on, kind in seen if not on} == {EncoderAttention}


def test_amp_choices_are_the_core_precision_rule():
    cpu = torch.device("cpu")
    assert get_amp_dtype("auto", cpu) == get_autocast_dtype(cpu, training=True) == get_autocast_dtype(cpu)
    assert get_amp_dtype("bf16", cpu) is torch.bfloat16 and get_amp_dtype("off", cpu) is None


def test_loader_options_feed_gpus_and_spare_cpus(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert get_loader_options(None, torch.device("cpu")) == {"num_workers": 0, "pin_memory": False}
    assert get_loader_options(3, torch.device("cpu")) == {"num_workers": 3, "pin_memory": False, "prefetch_factor": 4}
    workers = min(8, get_cpu_budget() - 1)
    assert get_loader_options(None, torch.device("cuda"))["num_workers"] == workers
    assert get_loader_options(None, torch.device("cuda"))["pin_memory"]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(get_cpu_budget()))  # as many GPU processes as CPUs
    assert get_loader_options(None, torch.device("cuda"))["num_workers"] == 0


def test_worker_processes_train_exactly_like_the_main_process(brain_samples, tmp_path):
    # Workers only load data; the model trains in this process either way. Their batches arrive in
    # other memory, and CPU kernels may round differently there (seen: 3.5e-9 on a loaded machine),
    # so the weights are compared with a tolerance far below what one other batch order gives.
    def train_on(samples, workers: int, name: str) -> dict:
        torch.manual_seed(0)
        sam = build_sam(get_tiny_config())
        train(sam, samples, None, _get_config(tmp_path / name, iterations=2, batch_size=2, num_workers=workers))
        return sam.state_dict()

    samples = brain_samples[:4]
    main, workers = train_on(samples, 0, "main"), train_on(samples, 1, "workers")
    for name, tensor in main.items():
        torch.testing.assert_close(tensor, workers[name], rtol=0, atol=1e-7, msg=name)
    # The tolerance catches a wrong data order: the same samples, the batches swapped.
    swapped = train_on(samples[2:] + samples[:2], 0, "swapped")
    assert max(float((tensor - swapped[name]).abs().max()) for name, tensor in main.items()) > 1e-5


def test_freeze_keeps_parts_fixed(tiny_sam, brain_samples, tmp_path):
    before = {key: value.clone() for key, value in tiny_sam.state_dict().items()}
    train(tiny_sam, brain_samples, None, _get_config(tmp_path, iterations=1, freeze=("image_encoder",)))
    after = tiny_sam.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("image_encoder."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("mask_decoder."))
    with pytest.raises(InputError, match="match no parameter"):
        train(tiny_sam, brain_samples, None, _get_config(tmp_path, iterations=1, freeze=("encoder",)))
    with pytest.raises(InputError, match="leaves nothing to train"):
        train(tiny_sam, brain_samples, None, _get_config(tmp_path, iterations=1, freeze=(
            "image_encoder", "prompt_encoder", "mask_decoder")))


@pytest.fixture(scope="module")
def train_folder(brain_samples, tmp_path_factory):
    """(images/ + labels/ folder of 3 real MR slices, a tiny checkpoint): what `medicosam train` reads."""
    import SimpleITK as sitk

    from medicosam.models.checkpoint import export_sam

    root = tmp_path_factory.mktemp("train_folder")
    for folder in ("images", "labels"):
        (root / "data" / folder).mkdir(parents=True)
    for i, sample in enumerate(brain_samples[:3]):
        image = sample["image"][0, :117, :99].numpy().astype(np.uint8)
        labels = np.zeros(image.shape, np.uint8)
        for object_id, mask in enumerate(sample["masks"][:, :117, :99].numpy(), start=1):
            labels[mask] = object_id
        sitk.WriteImage(sitk.GetImageFromArray(image), str(root / "data" / "images" / f"mr--{i}.png"))
        sitk.WriteImage(sitk.GetImageFromArray(labels), str(root / "data" / "labels" / f"mr--{i}.png"))
    torch.manual_seed(0)
    export_sam(build_sam(get_tiny_config()), root / "tiny.pt")
    return root / "data", root / "tiny.pt"


def _train_command(train_folder, out, *extra) -> list:
    """`medicosam train` on `train_folder` into `out`, one thread, as a subprocess command."""
    data, checkpoint = train_folder
    return [sys.executable, "-m", "medicosam.cli", "--threads", "1", "train", "--data", str(data), "--checkpoint",
            str(checkpoint), "--out", str(out), "--val-fraction", "0", "--quiet", *extra]


def test_cli_trains_from_a_folder(train_folder, tmp_path):
    from medicosam.cli import main

    out = tmp_path / "out"
    status = main(["train", "--preset", "medsam", "--data", str(train_folder[0]), "--checkpoint",
                   str(train_folder[1]), "--out", str(out), "--iterations", "2", "--val-fraction", "0",
                   "--lr", "1e-4", "--quiet"])
    assert status == 0
    assert load_training_checkpoint(out / CHECKPOINT_NAME)["iteration"] == 2
    assert (out / "model.pt").is_file()


def test_the_same_seed_on_one_thread_trains_the_same_weights_bit_for_bit(train_folder, tmp_path):
    # The e_sem decoder `train` builds took torch's unseeded generator: two runs differed by 2e-5 after one
    # iteration (1.6e-4 after 8). Data order, prompts and worker seeds were already derived from --seed.
    for run in ("a", "b"):
        subprocess.run(_train_command(train_folder, tmp_path / run, "--preset", "medicosam", "--iterations", "2",
                                      "--decoder-features", "8"), env=_get_env(), check=True, timeout=600)
    a, b = (torch.load(tmp_path / run / "model_with_decoder.pt", weights_only=True) for run in "ab")
    for part in ("model_state", "decoder_state"):
        assert a[part].keys() == b[part].keys()
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)


def test_a_second_training_on_one_out_is_refused_naming_the_first(brain_samples, train_folder, tmp_path):
    script, samples_file = _write_script(tmp_path, brain_samples)
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, script, samples_file, str(out), "epochs=1000", "save_every=1",
                              "batch_size=1"], env=_get_env(), stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / CHECKPOINT_NAME).exists() and time.monotonic() < deadline:
            assert first.poll() is None, first.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        with pytest.raises(RunError, match=rf"{out} is in use by another training \(process {first.pid} on .*, "
                                           r"started .*\): wait for it to end, or train into another --out"):
            train(build_sam(get_tiny_config()), brain_samples, None, _get_config(tmp_path, iterations=1))
        second = subprocess.run(_train_command(train_folder, out, "--preset", "medsam", "--iterations", "1"),
                                env=_get_env(), capture_output=True, text=True, timeout=600)
        assert second.returncode == 2 and f"in use by another training (process {first.pid} on " in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1 and first.poll() is None  # the first goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    result = train(build_sam(get_tiny_config()), brain_samples, None, _get_config(tmp_path, iterations=1))
    assert result.iteration == 1  # a killed run holds nothing: the system released its lock


def test_disk_full_during_a_checkpoint_save_says_so_and_keeps_the_previous_one(train_folder, tmp_path):
    # A real full file system: a 7 MB tmpfs in a private mount namespace (no root needed where user
    # namespaces are allowed). The tiny model's latest.pt (with AdamW's state) is 5 MB: the first save fits,
    # the second (written beside it before the rename) does not.
    small = tmp_path / "small"
    small.mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"', str(small)],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tiny tmpfs here (unshare -rm: {probe.stderr.strip()})")
    script = ('mount -t tmpfs -o size=7m tmpfs "$0" || exit 99; "$@"; echo $? > "$0.status"; '
              'cp "$0/latest.pt" "$0.kept.pt"')
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script, str(small),
                           *_train_command(train_folder, small, "--preset", "medsam", "--iterations", "3",
                                           "--save-every", "1")], env=_get_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "small.status").read_text().strip() == "2" and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"medicosam: error: disk full: the checkpoint of iteration 2 does not fit in {small} (")
    assert f"MB free there); the last good checkpoint {small / CHECKPOINT_NAME} (iteration 1) was kept. Free some " \
           "space, then run the same command with --resume" in done.stderr
    assert load_training_checkpoint(tmp_path / "small.kept.pt")["iteration"] == 1


def test_ctrl_c_stops_training_in_one_line_that_says_how_to_resume(train_folder, tmp_path):
    out = tmp_path / "run"
    command = _train_command(train_folder, out, "--preset", "medsam", "--iterations", "100000", "--save-every", "1")
    # a shell's background job starts with SIGINT ignored, and Python then never turns it into Ctrl-C
    process = subprocess.Popen(command, env=_get_env(), stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not (out / CHECKPOINT_NAME).exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # as Ctrl-C in a terminal
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err, err
    (line,) = err.strip().splitlines()
    assert re.fullmatch(rf"medicosam: stopped \(Ctrl-C\) at iteration (\d+); the last good checkpoint "
                        rf"{re.escape(str(out / CHECKPOINT_NAME))} \(iteration (\d+)\) was kept: run the same command "
                        r"with --resume to continue from it", line), line
    kept = load_training_checkpoint(out / CHECKPOINT_NAME)["iteration"]
    assert f"(iteration {kept}) was kept" in line
    resumed = subprocess.run([*command[:command.index("--iterations") + 1], str(kept + 1), "--resume"],
                             env=_get_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and f"trained iterations {kept} -> {kept + 1}" in resumed.stdout
