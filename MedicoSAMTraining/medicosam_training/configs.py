"""The settings of both trainers (interactive and semantic), free of torch.

Every command registers its sub-commands at start, and `medicosam train` / `train-semantic` read their
option defaults from these fields, so this module must import without torch: the objective's preset
and the decoder's width limit are imported when a config is made.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Tuple, Union

from medicosam.errors import InputError

if TYPE_CHECKING:
    from .objective import ObjectiveConfig

AMP_CHOICES = ("auto", "bf16", "off")
DEFAULT_PRESET = "medicosam"
#: TrainConfig fields a resumed run may change: when to stop, how often to save and log, and how the
#: same steps are computed (device, precision, attention kernels, activation checkpointing, data
#: workers). Every other field (the objective, lr and its schedule, weight decay, batch size, seed,
#: freeze, decoder width) defines the optimisation itself: a run resumed with another value would
#: match neither configuration (the optimizer would even keep the saved lr), so it is refused.
RESUMABLE_CHANGES = ("epochs", "iterations", "save_every", "log_every", "num_workers", "device", "amp",
                     "grad_checkpointing", "fast_attention", "out_dir", "resume", "progress")
#: How the BatchNorm layers of the model (TinyViT's; SAM's ViT has none) normalise while training:
#: with each batch's statistics, updating the running ones ("batch"), or with the running statistics
#: the weights came with, kept fixed ("running", as in eval mode; their scale and shift still train).
BATCHNORM_CHOICES = ("batch", "running")
#: Where the mask decoder's three multimask heads (a lone point's outputs) start a new run: as the model
#: has them ("keep"), or with the single-mask head's hypernetwork MLP copied into each ("from-single"):
#: for a model trained with one output only (LiteMedSAM: boxes, multimask_output=False), whose multimask
#: heads never learnt and give empty masks; their own mask tokens stay, so every other output starts unchanged.
MULTIMASK_HEAD_CHOICES = ("keep", "from-single")
#: The settings a model family chooses when a config leaves them None (its module's `TRAINING_DEFAULTS`),
#: else these, the paper's: lr 1e-5 for every part (encoder_lr None: the same lr), nothing frozen.
RECIPE_DEFAULTS = {"lr": 1e-5, "encoder_lr": None, "batchnorm": "batch", "freeze": (), "multimask_heads": "keep"}


def _get_default_objective() -> ObjectiveConfig:
    from .objective import get_preset

    return get_preset(DEFAULT_PRESET)


@dataclasses.dataclass
class TrainConfig:
    """How to train (the objective is one field of it).

    The fields of `RECIPE_DEFAULTS` (lr, encoder_lr, batchnorm, freeze, multimask_heads) may be left None: `train` then
    takes the model family's recipe (`with_recipe`; SAM: the paper's, LiteMedSAM: docs/training.md).

    Attributes:
        objective: Algorithm 1's settings; default the `medicosam` preset.
        lr, weight_decay: AdamW's (paper: lr 1e-5; weight decay is torch's default 0.01); lr is that of
            every part but the image encoder (prompt encoder, mask decoder, e_sem decoder).
        encoder_lr: the image encoder's lr (None in the recipe: the same as lr).
        batchnorm: see `BATCHNORM_CHOICES`; a BatchNorm whose parameters are all frozen keeps its
            running statistics either way (`freeze` keeps a part fixed, statistics included).
        lr_decay, lr_decay_every: multiply the lr by `lr_decay` every `lr_decay_every` epochs
            (paper: 0.9 every epoch; micro-sam's v2 run: every 2).
        epochs, iterations: stop after this many epochs or iterations, whichever comes first;
            both None: one epoch.
        batch_size: images per step and process.
        freeze: parameter-name prefixes kept fixed, e.g. ("prompt_encoder",).
        multimask_heads: see `MULTIMASK_HEAD_CHOICES` (a resumed run continues from its saved weights).
        amp: "auto" (bf16 autocast where the device runs it natively, else fp32: the core's
            `medicosam.device.get_autocast_dtype` with training=True), "bf16" or "off".
        grad_checkpointing: recompute encoder blocks in the backward pass (less memory, ~30 % slower).
        fast_attention: SDPA attention (`medicosam.acceleration.fast_attention`, `--fast/--no-fast`),
            the same result in fp32 and the same saved weights; None: on CUDA (fused kernels, a
            fraction of the memory), off on the CPU (its backward with the rel-pos bias is ~8 % slower there).
        out_dir: checkpoints, logs and the exported model.
        save_every: also write `latest.pt` every this many iterations (always at each epoch end).
        seed: seeds data order, object sampling and prompts.
        log_every: TensorBoard interval in iterations.
        num_workers: DataLoader worker processes; None: `runtime.get_loader_options` decides.
        device: "auto", "cpu", "cuda", ... (under torchrun: the local rank's GPU).
        resume: continue from `out_dir/latest.pt` when it exists (model, optimizer and lr schedule as
            saved); only the fields in `RESUMABLE_CHANGES` may differ from the saved run's.
        decoder_features: width of the segmentation decoder (e_sem); 64 is micro-sam's.
        progress: show a tqdm bar (rank 0).
    """

    objective: ObjectiveConfig = dataclasses.field(default_factory=_get_default_objective)
    lr: Optional[float] = None
    encoder_lr: Optional[float] = None
    batchnorm: Optional[str] = None
    weight_decay: float = 0.01
    lr_decay: float = 0.9
    lr_decay_every: int = 1
    epochs: Optional[int] = None
    iterations: Optional[int] = None
    batch_size: int = 1
    freeze: Optional[Tuple[str, ...]] = None
    multimask_heads: Optional[str] = None
    amp: str = "auto"
    grad_checkpointing: bool = False
    fast_attention: Optional[bool] = None
    out_dir: Union[str, Path] = "medicosam-training"
    save_every: int = 1000
    seed: int = 0
    log_every: int = 10
    num_workers: Optional[int] = None
    device: str = "auto"
    resume: bool = False
    decoder_features: int = 64
    progress: bool = True

    def __post_init__(self) -> None:
        from .unetr import MAX_DECODER_FEATURES

        checks = [
            (self.lr is None or self.lr > 0, f"lr={self.lr}: must be > 0"),
            (self.encoder_lr is None or self.encoder_lr > 0, f"encoder_lr={self.encoder_lr}: must be > 0"),
            (self.batchnorm in (None,) + BATCHNORM_CHOICES,
             f"batchnorm={self.batchnorm!r}: use one of {BATCHNORM_CHOICES}"),
            (self.multimask_heads in (None,) + MULTIMASK_HEAD_CHOICES,
             f"multimask_heads={self.multimask_heads!r}: use one of {MULTIMASK_HEAD_CHOICES}"),
            (0 < self.lr_decay <= 1, f"lr_decay={self.lr_decay}: use a factor in (0, 1]"),
            (self.lr_decay_every >= 1, f"lr_decay_every={self.lr_decay_every}: use 1 or more epochs"),
            (self.epochs is None or self.epochs >= 1, f"epochs={self.epochs}: use 1 or more"),
            (self.iterations is None or self.iterations >= 1, f"iterations={self.iterations}: use 1 or more"),
            (self.batch_size >= 1, f"batch_size={self.batch_size}: use 1 or more"),
            (self.save_every >= 1, f"save_every={self.save_every}: use 1 or more"),
            (self.log_every >= 1, f"log_every={self.log_every}: use 1 or more"),
            (self.amp in AMP_CHOICES, f"amp={self.amp!r}: use one of {AMP_CHOICES}"),
            (self.num_workers is None or self.num_workers >= 0, f"num_workers={self.num_workers}: use 0 or more"),
            (1 <= self.decoder_features <= MAX_DECODER_FEATURES,
             f"decoder_features={self.decoder_features}: use 1 to {MAX_DECODER_FEATURES} (micro-sam: 64)"),
        ]
        errors = [message for ok, message in checks if not ok]
        if errors:
            raise InputError("invalid training configuration: " + "; ".join(errors))
        self.freeze = None if self.freeze is None else tuple(self.freeze)
        self.out_dir = Path(self.out_dir)

    def with_recipe(self, family_defaults: Mapping[str, Any]) -> TrainConfig:
        """This config with each recipe field left None taken from the model family's defaults, else
        from `RECIPE_DEFAULTS`; an encoder_lr still None becomes lr. What a run records and resumes with."""
        values = {name: getattr(self, name) for name in RECIPE_DEFAULTS}
        for name, default in RECIPE_DEFAULTS.items():
            if values[name] is None:
                values[name] = family_defaults.get(name, default)
        if values["encoder_lr"] is None:
            values["encoder_lr"] = values["lr"]
        return dataclasses.replace(self, **values)



@dataclasses.dataclass
class SemanticTrainConfig:
    """Settings of `train_semantic`.

    Attributes:
        iterations: optimiser steps (medico-sam: 50000).
        batch_size: items per step (medico-sam: 2D 6, 3D 2).
        lr, weight_decay: AdamW's (medico-sam: 1e-4, torch's default decay 0.01).
        dice_weight: share of the Dice term; the rest is cross entropy.
        val_every: validate every this many iterations (and at the end).
        lr_patience: validations without improvement before the lr is multiplied by 0.9.
        seed: data order.
        device: "auto", "cpu", "cuda", ...
        amp: autocast as `TrainConfig.amp="auto"` (True) or fp32 (False).
        num_workers: DataLoader processes; None: `runtime.get_loader_options` decides.
        fast_attention: SDPA attention in the SAM encoder (exact in fp32, far less GPU memory);
            None: on CUDA only, as `TrainConfig.fast_attention`.
        out_dir: where best.pt and history.json go; None writes nothing.
        time_limit_s: stop (and validate) after this many seconds.
        progress: show a tqdm bar.
    """

    iterations: int = 5000
    batch_size: int = 2
    lr: float = 1e-4
    weight_decay: float = 0.01
    dice_weight: float = 0.5
    val_every: int = 500
    lr_patience: int = 10
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    num_workers: Optional[int] = None
    fast_attention: Optional[bool] = None
    out_dir: Optional[Union[str, Path]] = None
    time_limit_s: Optional[float] = None
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [(self.iterations >= 1, f"iterations={self.iterations}: use 1 or more"),
                  (self.batch_size >= 1, f"batch_size={self.batch_size}: use 1 or more"),
                  (self.lr > 0, f"lr={self.lr}: must be > 0"),
                  (0.0 <= self.dice_weight <= 1.0, f"dice_weight={self.dice_weight}: use a share in [0, 1]"),
                  (self.val_every >= 1, f"val_every={self.val_every}: use 1 or more")]
        errors = [message for ok, message in checks if not ok]
        if errors:
            raise InputError("invalid semantic training configuration: " + "; ".join(errors))
