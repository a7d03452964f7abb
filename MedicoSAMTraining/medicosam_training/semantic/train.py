"""Supervised semantic finetuning of any semantic model (SAM-based 2D / 3D, MONAI baselines).

Loss: MONAI's `DiceCELoss` on the raw logits, 0.5 x Dice (softmax, one-hot target, all classes,
computed over the whole batch as torch-em's Dice is) + 0.5 x cross entropy, medico-sam's weights.
Both terms see the same logits (see `models.py` for the sigmoid-then-softmax quirk this avoids).
Optimiser and schedule follow medico-sam: AdamW, lr 1e-4, ReduceLROnPlateau(factor 0.9) on the
validation loss. Validation (every `val_every` iterations and at the end) measures the hard Dice
per foreground class (MONAI `DiceMetric`, samples without the class skipped); the model with the
best mean is kept, written to `out_dir/best.pt` and loaded back at the end.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medicosam.errors import RunError

from ..configs import SemanticTrainConfig
from ..runtime import autocast, get_amp_dtype, get_loader_options, use_fast_attention

BEST_NAME = "best.pt"
HISTORY_NAME = "history.json"


@dataclasses.dataclass
class SemanticTrainResult:
    """What a run did: iterations, validation history, the best mean Dice and where it was saved."""

    iterations: int
    history: List[Dict[str, Any]]
    best_dice: float
    best_path: Optional[Path]


def get_semantic_loss(dice_weight: float = 0.5) -> nn.Module:
    """Logits (B, C, ...) and class ids (B, 1, ...) -> dice_weight x Dice + (1 - dice_weight) x CE."""
    from monai.losses import DiceCELoss

    return DiceCELoss(softmax=True, to_onehot_y=True, batch=True, lambda_dice=dice_weight,
                      lambda_ce=1.0 - dice_weight)


@torch.no_grad()
def evaluate_model(model: nn.Module, dataset: Dataset, loss_fn: nn.Module, batch_size: int = 2,
                   amp: bool = True) -> Dict[str, Any]:
    """{"loss": mean loss, "dice": {class: Dice}, "mean_dice": mean over classes} on `dataset`."""
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    device = next(model.parameters()).device
    n_classes = model.config.n_classes
    metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    was_training = model.training
    model.eval()
    losses = []
    for batch in DataLoader(dataset, batch_size=batch_size):
        images, labels = batch["image"].to(device), batch["labels"].to(device)[:, None]
        with _get_autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        losses.append(float(loss_fn(logits, labels)))
        metric(one_hot(logits.argmax(1, keepdim=True), n_classes), one_hot(labels, n_classes))
    model.train(was_training)
    per_class = metric.aggregate().cpu().tolist()
    dice = {c + 1: value for c, value in enumerate(per_class)}
    scored = [value for value in per_class if not math.isnan(value)]
    return {"loss": sum(losses) / len(losses), "dice": dice,
            "mean_dice": sum(scored) / len(scored) if scored else math.nan}


def _get_autocast(device: torch.device, amp: bool):
    """The interactive trainer's precision: its "auto" with `amp`, else fp32."""
    return autocast(device, get_amp_dtype("auto" if amp else "off", device))


def _get_batches(dataset: Dataset, config: SemanticTrainConfig, device: torch.device):
    """Endless shuffled batches, a new seeded order every epoch."""
    epoch = 0
    while True:
        generator = torch.Generator().manual_seed(config.seed * 100003 + epoch)
        loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=generator,
                            drop_last=len(dataset) >= config.batch_size,
                            **get_loader_options(config.num_workers, device))
        yield from loader
        epoch += 1


def _without_onednn_3d(model: nn.Module, device: torch.device):
    """ATen's own 3D convolutions instead of oneDNN's on the CPU while training: torch 2.14.1's oneDNN 3D
    convolution backward corrupts memory on AVX-512 / AMX CPUs (NaN weights after one step, or an abort
    with "double free or corruption"; measured with ONEDNN_MAX_CPU_ISA=AVX512_CORE and unrestricted)."""
    has_3d = any(isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)) for m in model.modules())
    return torch.backends.mkldnn.flags(enabled=False) if device.type == "cpu" and has_3d else contextlib.nullcontext()


def train_semantic(model: nn.Module, train_set: Dataset, val_set: Optional[Dataset] = None,
                   config: Optional[SemanticTrainConfig] = None) -> SemanticTrainResult:
    """Finetune `model` in place (see the module docstring); with `val_set` it ends with the best weights.

    Args:
        model: a semantic model (`models.get_semantic_model`, `baselines.build_baseline_model`).
        train_set, val_set: `SemanticSliceDataset` (2D models) or `SemanticPatchDataset` (3D).
        config: the run's settings.
    """
    from tqdm import tqdm

    from medicosam.acceleration import fast_attention
    from medicosam.device import get_device

    from .models import save_semantic_model

    config = config or SemanticTrainConfig()
    device = get_device(config.device)
    model.to(device).train()
    loss_fn = get_semantic_loss(config.dice_weight)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay, fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.9,
                                                           patience=config.lr_patience)
    out_dir = None if config.out_dir is None else Path(config.out_dir)
    history: List[Dict[str, Any]] = []
    best_dice, best_state, best_path = -math.inf, None, None
    start = time.monotonic()
    batches = _get_batches(train_set, config, device)
    with fast_attention(model, use_fast_attention(config.fast_attention, device)), _without_onednn_3d(model, device):
        bar = tqdm(total=config.iterations, disable=not config.progress, desc="semantic training")
        running = []
        for iteration in range(1, config.iterations + 1):
            batch = next(batches)
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["labels"].to(device, non_blocking=True)[:, None]
            with _get_autocast(device, config.amp):
                logits = model(images)
            loss = loss_fn(logits.float(), labels)
            if not torch.isfinite(loss):
                raise RunError(f"the loss became {float(loss)} at iteration {iteration}: lower the lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running.append(float(loss.detach()))
            bar.update()
            bar.set_postfix(loss=f"{running[-1]:.3f}")
            timed_out = config.time_limit_s is not None and time.monotonic() - start > config.time_limit_s
            if iteration % config.val_every and iteration != config.iterations and not timed_out:
                continue
            entry: Dict[str, Any] = {"iteration": iteration, "train_loss": sum(running) / len(running),
                                     "lr": optimizer.param_groups[0]["lr"], "seconds": time.monotonic() - start}
            running = []
            if val_set is not None:
                scores = evaluate_model(model, val_set, loss_fn, config.batch_size, config.amp)
                entry.update(val_loss=scores["loss"], val_dice=scores["dice"], val_mean_dice=scores["mean_dice"])
                scheduler.step(scores["loss"])
                if scores["mean_dice"] > best_dice:
                    best_dice, best_state = scores["mean_dice"], copy.deepcopy(model.state_dict())
                    if out_dir is not None:
                        best_path = save_semantic_model(model, out_dir / BEST_NAME)
            history.append(entry)
            if timed_out:
                break
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    elif out_dir is not None:
        best_path = save_semantic_model(model, out_dir / BEST_NAME)
    if out_dir is not None:
        (out_dir / HISTORY_NAME).write_text(json.dumps(history, indent=1))
    return SemanticTrainResult(iterations=iteration, history=history,
                               best_dice=best_dice if best_state is not None else math.nan, best_path=best_path)
