"""The training loop: Algorithm 1 on one CPU, one GPU or many GPUs (torchrun), resumable.

Paper settings (section 3) are the defaults: AdamW with lr 1e-5, the learning rate multiplied by
0.9 after every epoch, all model parts trained. A model family may choose its own (its module's
`TRAINING_DEFAULTS`: learning rate per part, BatchNorm mode, frozen parts; `TrainConfig.with_recipe`):
the model is a `LoadedSam` or a bare model of any trainable family, asked for its family, never
tested by name. Settings: `configs.TrainConfig`; precision, data loading, DDP and RNG states:
`runtime.py` (shared with the semantic trainer).

Files in `out_dir` (rank 0 writes, every other rank only reads):
- `latest.pt`: model (plain SAM keys under `model_state`, micro-sam's layout, so `load_sam` reads
  it), segmentation decoder, optimizer, scheduler, RNG states, iteration, epoch, configs. Written
  atomically (temporary file, fsync, rename): a crash leaves the previous checkpoint.
- `model.pt`: the final model as a plain state dict in its family's layout (`export_sam`: SAM's loads in
  `segment_anything`, LiteMedSAM's in its reference builder); `model_with_decoder.pt` with e_sem:
  micro-sam's `{"model_state", "decoder_state"}`.
- `logs/`: TensorBoard scalars.
- `.medicosam-train.lock` (a file lock, as downloads use) and `.medicosam-train.owner` (who holds it):
  one training at a time per folder; another one is refused, naming the holder.

Determinism without broadcasts: the prompt generator of iteration i on rank r is seeded with
(seed, r, i) and the data order of epoch e with (seed, e), so a resumed run draws the same prompts
and batches as an uninterrupted one, and no rank needs another rank's random state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn

from medicosam.acceleration import fast_attention, fused_norms
from medicosam.atomic import get_stale_temporaries
from medicosam.errors import Cancelled, InputError, ModelError, RunError
from medicosam_training.configs import RESUMABLE_CHANGES, TrainConfig
from medicosam_training.objective import ObjectiveModule, ObjectiveOutput
from medicosam_training.runtime import (
    Distributed,
    autocast,
    get_amp_dtype,
    get_distributed,
    get_loader_options,
    get_rng_states,
    set_rng_states,
    use_fast_attention,
)

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "latest.pt"
EXPORT_NAME = "model.pt"
JOINT_EXPORT_NAME = "model_with_decoder.pt"
SAM_PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")
_FORMAT = "medicosam-training-checkpoint/1"
LOCK_NAME, OWNER_NAME = ".medicosam-train.lock", ".medicosam-train.owner"


@dataclasses.dataclass
class TrainResult:
    """Where a finished run stands and what it wrote."""

    out_dir: Path
    start_iteration: int  # > 0 when the run resumed from a checkpoint
    iteration: int
    epoch: int
    checkpoint: Path
    export: Optional[Path]
    joint_export: Optional[Path]
    validation: List[Dict[str, float]]  # one entry per finished epoch (empty without val data)
    seconds: float = 0.0  # wall time of this call's training loop


def freeze_parameters(model: nn.Module, prefixes: Tuple[str, ...]) -> None:
    """Turn off gradients of parameters whose names start with one of `prefixes`."""
    names = [name for name, _ in model.named_parameters()]
    unknown = [prefix for prefix in prefixes if not any(name.startswith(prefix) for name in names)]
    if unknown:
        raise InputError(f"freeze prefixes {unknown} match no parameter: use parts like {SAM_PARTS} "
                            "or longer prefixes such as 'image_encoder.blocks.0'")
    for name, parameter in model.named_parameters():
        if name.startswith(prefixes):
            parameter.requires_grad_(False)


def copy_single_mask_head(mask_decoder: nn.Module) -> None:
    """Start the three multimask heads from the single-mask head: its hypernetwork MLP copied into theirs
    (`TrainConfig.multimask_heads="from-single"`). LiteMedSAM, trained with boxes and one output, has
    multimask heads that never learnt (their MLPs' weights a sixth of the trained head's norm): a lone point
    gives empty masks from all three, and Algorithm 1 judges a lone point by those heads alone. Measured
    (docs/training.md): after 20 iterations point Dice 0.002 kept, 0.28 copied, every other start equal or
    better. The heads keep their own mask tokens, so the single-mask output starts unchanged."""
    mlps = mask_decoder.output_hypernetworks_mlps
    with torch.no_grad():
        for head in mlps[1:]:
            for target, source in zip(head.parameters(), mlps[0].parameters()):
                target.copy_(source)


def get_encoder_blocks(image_encoder: nn.Module) -> List[nn.Module]:
    """The encoder's repeated blocks, the members of its `blocks` lists (SAM's ViT: `blocks.N`; TinyViT:
    `layers.N.blocks.M`), which activation checkpointing recomputes one by one."""
    return [module for name, module in image_encoder.named_modules() if re.fullmatch(r"(.+\.)?blocks\.\d+", name)]


@contextlib.contextmanager
def activation_checkpointing(image_encoder: nn.Module, enabled: bool) -> Iterator[None]:
    """Recompute each encoder block in the backward pass instead of keeping its activations.

    The blocks' `forward` is wrapped on the instances (state-dict keys stay the model's) and
    restored on exit. A BatchNorm with batch statistics in a recomputed block updates its running
    statistics twice per step (use batchnorm="running" with it, as the LiteMedSAM recipe does).
    """
    from functools import partial

    from torch.utils.checkpoint import checkpoint

    blocks = get_encoder_blocks(image_encoder) if enabled else []
    for block in blocks:
        block.forward = partial(checkpoint, block.forward, use_reentrant=False)
    try:
        yield
    finally:
        for block in blocks:
            del block.forward  # the instance attribute goes, the class method is back


def set_train_mode(module: nn.Module, sam: nn.Module, batchnorm: str) -> None:
    """`module` in training mode, except the BatchNorms of `sam` that keep their running statistics:
    all with batchnorm="running", and those whose parameters are all frozen (`TrainConfig.batchnorm`)."""
    module.train()
    norms = [norm for norm in sam.modules() if isinstance(norm, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        if batchnorm == "running" or not any(p.requires_grad for p in norm.parameters()):
            norm.eval()


def build_semantic_decoder(sam: nn.Module, features: int,
                           decoder_state: Optional[Dict[str, Any]] = None) -> nn.Module:
    """The e_sem segmentation decoder on `sam`'s encoder.

    With a `decoder_state` (a joint checkpoint, micro-sam's released decoder) the decoder takes that
    state's layout (upsampler variant, widths) and weights; otherwise a new one `features` wide. Either
    upsamples the model's embedding to its input size (`unetr.get_decoder_scale`).
    """
    from medicosam_training.unetr import get_decoder_scale, get_unetr_decoder, get_unetr_decoder_from_state

    scale = get_decoder_scale(sam)
    if decoder_state is None:
        return get_unetr_decoder(sam.image_encoder, out_channels=2, initial_features=features, scale=scale)
    try:
        return get_unetr_decoder_from_state(sam.image_encoder, decoder_state, out_channels=2, scale=scale)
    except (InputError, ModelError) as error:
        raise ModelError(f"the checkpoint's segmentation decoder does not fit this model: {error}") from error


def load_training_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """A `latest.pt` read safely (weights_only), checked to be a MedicoSAM training checkpoint."""
    from medicosam.models.checkpoint import load_checkpoint_file

    state = load_checkpoint_file(path)
    if state.get("format") != _FORMAT:
        raise ModelError(f"{path} is not a MedicoSAM training checkpoint (no format {_FORMAT!r}); "
                            "to finetune from a model file, pass it as the model instead")
    return state


def get_config_record(config: TrainConfig) -> Dict[str, Any]:
    """The `objective` and `train_config` entries a checkpoint stores (paths as text)."""
    fields = {key: str(value) if isinstance(value, Path) else value
              for key, value in dataclasses.asdict(config).items() if key != "objective"}
    return {"objective": dataclasses.asdict(config.objective), "train_config": fields}


def check_resumed_config(state: Dict[str, Any], config: TrainConfig, path: Path) -> None:
    """Refuse to resume a checkpoint with settings outside `RESUMABLE_CHANGES` changed, naming them.

    Only settings the checkpoint recorded are compared, so older checkpoints stay resumable.
    """
    def flatten(record: Dict[str, Any]) -> Dict[str, Any]:
        record = json.loads(json.dumps({key: record.get(key) or {} for key in ("objective", "train_config")}))
        return {**{f"objective.{key}": value for key, value in record["objective"].items()},
                **record["train_config"]}  # tuples became lists on both sides alike

    saved, now = flatten(state), flatten(get_config_record(config))
    differing = [f"{key}: {saved[key]!r} -> {now.get(key)!r}" for key in saved
                 if key not in RESUMABLE_CHANGES and saved[key] != now.get(key)]
    if differing:
        raise InputError(f"{path} was trained with other settings ({'; '.join(differing)}): resume with the "
                            f"saved settings or train into a new out_dir (a resumed run may change only "
                            f"{', '.join(RESUMABLE_CHANGES)})")


def export_training_checkpoint(checkpoint: Union[str, Path, Mapping[str, Any]], out: Union[str, Path],
                               with_decoder: bool = False) -> Path:
    """Write the model of a training checkpoint (a `latest.pt`, or the dict `load_training_checkpoint`
    read from one) as a plain state dict in its family's layout (`export_sam`), or the joint layout."""
    from medicosam.models.checkpoint import export_sam, export_sam_with_decoder

    state = checkpoint if isinstance(checkpoint, Mapping) else load_training_checkpoint(checkpoint)
    if not with_decoder:
        return export_sam(state["model_state"], out)
    if state.get("decoder_state") is None:
        raise ModelError(f"{checkpoint} has no segmentation decoder (it was trained without e_sem): "
                            "export without --with-decoder")
    return export_sam_with_decoder(state["model_state"], state["decoder_state"], out)


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files a killed process left beside `path` (see `medicosam.atomic`)."""
    for stale in get_stale_temporaries(path):
        stale.unlink()


def _get_norm(tensors: List[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all `tensors` together (NaN/inf if any element is)."""
    norms = [torch.linalg.vector_norm(t.float()) for t in tensors]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


class _Run:
    """One training run's state; `train` drives it."""

    def __init__(self, sam: nn.Module, sam_config: Any, family: Any, decoder: Optional[nn.Module],
                 config: TrainConfig, device: torch.device, dist: Distributed) -> None:
        self.config, self.device, self.dist = config, device, dist
        self.sam_config, self.family = sam_config, family
        self.module = ObjectiveModule(sam, config.objective, decoder).to(device)
        if config.multimask_heads == "from-single":  # a resumed run then loads its saved weights over these
            copy_single_mask_head(self.module.sam.mask_decoder)
        freeze_parameters(self.module.sam, config.freeze)
        self.parameters = [p for p in self.module.parameters() if p.requires_grad]
        if not self.parameters:
            raise InputError(f"freeze={config.freeze} leaves nothing to train: freeze fewer parts")
        self.optimizer = torch.optim.AdamW(self.get_parameter_groups(), lr=config.lr,
                                           weight_decay=config.weight_decay, fused=device.type == "cuda")
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=config.lr_decay_every,
                                                         gamma=config.lr_decay)
        self.model: nn.Module = self.module
        if dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            # Unused parameters vary per step (box vs point embeddings, mask-prompt convs).
            self.model = DistributedDataParallel(
                self.module, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=True)
        self.amp_dtype = get_amp_dtype(config.amp, device)
        self.iteration = self.epoch = self.epoch_batches = 0
        self.saved_iteration: Optional[int] = None  # of the checkpoint on disk, once this run knows it
        self.validation: List[Dict[str, float]] = []
        self.checkpoint_path = Path(config.out_dir) / CHECKPOINT_NAME

    def get_parameter_groups(self) -> List[Dict[str, Any]]:
        """One group at `lr`, or, when the encoder's lr differs, the rest at `lr` then the encoder at its own."""
        if self.config.encoder_lr == self.config.lr:
            return [{"params": self.parameters}]
        encoder = {id(p) for p in self.module.sam.image_encoder.parameters()}
        groups = [{"params": [p for p in self.parameters if id(p) not in encoder]},
                  {"params": [p for p in self.parameters if id(p) in encoder], "lr": self.config.encoder_lr}]
        return [group for group in groups if group["params"]]

    def set_train_mode(self) -> None:
        set_train_mode(self.module, self.module.sam, self.config.batchnorm)

    # ------------------------------------------------------------------ checkpoints

    def get_state(self) -> Dict[str, Any]:
        from medicosam.models.checkpoint import WRITER_KEY, get_writer_record

        decoder = self.module.semantic_decoder
        return {
            "format": _FORMAT,
            WRITER_KEY: get_writer_record(),  # MedicoSAM's own file: any command loads it without --allow-custom
            "model_state": self.module.sam.state_dict(),
            "decoder_state": None if decoder is None else decoder.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": get_rng_states(),
            "iteration": self.iteration,
            "epoch": self.epoch,
            "epoch_batches": self.epoch_batches,
            "validation": self.validation,
            **get_config_record(self.config),
            "family": self.family.name,
            "sam_config": dataclasses.asdict(self.sam_config),
        }

    def save(self) -> None:
        from medicosam.models.checkpoint import save_atomically

        self.check_finite(_get_norm([p.detach() for p in self.parameters]), "the model weights", self.iteration)
        failed = None
        if self.dist.is_main:
            try:
                save_atomically(self.get_state(), self.checkpoint_path)
            except (OSError, RuntimeError) as error:  # torch reports a full disk as a RuntimeError
                failed = error
        if not self.everyone(failed is None):  # every rank stops, or the others hang in the next all-reduce
            if failed is None:
                raise RunError(f"rank 0 could not save {self.checkpoint_path}: see its message")
            if not _is_disk_full(failed):
                raise failed
            raise _get_disk_full_error(self.checkpoint_path.parent, f"the checkpoint of iteration {self.iteration}",
                                       self.describe_kept(), "run the same command with --resume") from None
        self.saved_iteration = self.iteration

    def describe_kept(self) -> str:
        """What a failed run leaves: the last checkpoint (and its iteration) or nothing."""
        if not self.checkpoint_path.exists():
            return "no checkpoint was written"
        at = "" if self.saved_iteration is None else f" (iteration {self.saved_iteration})"
        return f"the last good checkpoint {self.checkpoint_path}{at} was kept"

    def restore(self) -> None:
        state = load_training_checkpoint(self.checkpoint_path)
        check_resumed_config(state, self.config, self.checkpoint_path)
        try:
            self.module.sam.load_state_dict(state["model_state"])
            if self.module.semantic_decoder is not None and state.get("decoder_state") is not None:
                self.module.semantic_decoder.load_state_dict(state["decoder_state"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as error:
            raise ModelError(f"{self.checkpoint_path} does not fit this model or setup "
                                f"({str(error).splitlines()[0]}): resume with the same model, freeze and "
                                "e_sem settings, or use a new out_dir") from error
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_states(state["rng"])
        self.iteration, self.epoch = int(state["iteration"]), int(state["epoch"])
        self.saved_iteration = self.iteration
        self.epoch_batches = int(state["epoch_batches"])
        self.validation = list(state["validation"])

    # ------------------------------------------------------------------ steps

    def get_batch(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        moved = {key: batch[key].to(self.device, non_blocking=True) for key in ("image", "masks", "valid")}
        if batch.get("foreground") is not None:
            moved["foreground"] = batch["foreground"].to(self.device, non_blocking=True)
        return moved

    def everyone(self, ok: bool) -> bool:
        """True when `ok` holds on every rank (an all-reduce under DDP): all ranks stop together."""
        flag = torch.tensor([int(ok)], dtype=torch.int32, device=self.device)
        if self.dist.world_size > 1:
            torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MIN)
        return bool(int(flag) == 1)

    def check_finite(self, value: torch.Tensor, what: str, iteration: int) -> None:
        if not self.everyone(bool(torch.isfinite(value.detach().float()).all())):
            raise RunError(
                f"{what} is not finite (NaN/inf) at iteration {iteration}; {self.describe_kept()} and the broken "
                f"model was not saved. Lower the learning rate (now {self.optimizer.param_groups[0]['lr']:g}), "
                "train in fp32 (amp='off' / --amp off), and check the data for NaN or constant images.")

    def step(self, batch: Dict[str, Any]) -> ObjectiveOutput:
        batch = self.get_batch(batch)
        rng = np.random.default_rng((self.config.seed, self.dist.rank, self.iteration))
        self.optimizer.zero_grad(set_to_none=True)
        streaming = self.dist.world_size == 1  # backward pass by pass (compute_objective); DDP: after its forward
        with autocast(self.device, self.amp_dtype):
            output = self.model(batch["image"], batch["masks"], batch["valid"], rng, self.iteration,
                                batch.get("foreground"), backward=streaming)
        self.check_finite(output.loss, "the loss", self.iteration + 1)
        if not streaming:
            output.loss.backward()
        grads = [p.grad for p in self.parameters if p.grad is not None]
        self.check_finite(_get_norm(grads), "the gradient", self.iteration + 1)
        self.optimizer.step()
        self.iteration += 1
        self.epoch_batches += 1
        return output

    @torch.no_grad()
    def validate(self, dataset) -> Dict[str, float]:
        """Mean loss and hard Dice of the last decoder pass, with prompts seeded the same every epoch."""
        from medicosam_training.dataset import collate_objects

        loader = torch.utils.data.DataLoader(dataset, batch_size=self.config.batch_size, shuffle=False,
                                             collate_fn=collate_objects,
                                             **get_loader_options(self.config.num_workers, self.device))
        rng = np.random.default_rng((self.config.seed, 2 ** 31 - 1))
        self.module.eval()
        losses, dices, weights = [], [], []
        try:
            for batch in loader:
                batch = self.get_batch(batch)
                with autocast(self.device, self.amp_dtype):
                    output = self.module(batch["image"], batch["masks"], batch["valid"], rng, 0,
                                         batch.get("foreground"))
                losses.append(float(output.loss))
                dices.append(float(output.dice))
                weights.append(output.n_objects)
        finally:
            self.set_train_mode()
        return {"loss": float(np.mean(losses)), "dice": float(np.average(dices, weights=weights))}


def _get_epoch_indices(dataset, config: TrainConfig, dist: Distributed, epoch: int) -> List[int]:
    """This rank's sample order for `epoch`: a seeded shuffle split across ranks, whole batches only."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                 seed=config.seed, drop_last=True)
    sampler.set_epoch(epoch)
    indices = list(sampler)
    return indices[: len(indices) // config.batch_size * config.batch_size]


def _get_model(model: Any) -> Tuple[nn.Module, Any, Optional[Dict[str, Any]], Any]:
    """(model, its config, decoder state, its `ModelFamily`) from a loaded or a bare model of a trainable family."""
    from medicosam.models.checkpoint import get_model_family

    loaded = hasattr(model, "family")  # what load_sam returns
    family = model.family if loaded else get_model_family(model.state_dict())
    family.check("trainable", "be trained")
    if loaded:
        return model.sam, model.config, model.decoder_state, family
    config = family.get_module().get_checked_config(model.state_dict(), source="the model to train")
    return model, config, None, family


def train(model: Any, train_dataset, val_dataset=None, config: Optional[TrainConfig] = None,
          semantic_decoder: Optional[nn.Module] = None) -> TrainResult:
    """Finetune `model` (a `LoadedSam`, a `segment_anything` Sam or a `TinyVitSam`) with Algorithm 1.

    Args:
        model: the model to train, changed in place; its family decides the settings `config` leaves None.
        train_dataset, val_dataset: datasets of `medicosam_training.dataset` samples (any map-style
            dataset yielding its dicts); validation runs after every epoch when given.
        config: the run's settings.
        semantic_decoder: the e_sem decoder; default: built by `build_semantic_decoder`, loaded from
            the model's `decoder_state` when it has one.

    Returns:
        A `TrainResult`. Raises `RunError` (nothing saved) when the loss or gradients become
        NaN/inf.
    """
    from medicosam.device import get_device

    sam, sam_config, decoder_state, family = _get_model(model)
    config = (config or TrainConfig()).with_recipe(getattr(family.get_module(), "TRAINING_DEFAULTS", {}))
    if config.objective.e_sem and semantic_decoder is None:
        semantic_decoder = build_semantic_decoder(sam, config.decoder_features, decoder_state)
    device = get_device(config.device)
    dist = get_distributed(device)
    if device.type == "cuda" and dist.world_size > 1:
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    try:
        run = _Run(sam, sam_config, family, semantic_decoder, config, device, dist)
        with _holding_run_folder(run), activation_checkpointing(sam.image_encoder, config.grad_checkpointing), \
                fast_attention(sam, use_fast_attention(config.fast_attention, device)), fused_norms(sam):
            return _train(run, train_dataset, val_dataset)
    finally:
        if dist.owns_group:
            torch_dist.destroy_process_group()


def _train(run: _Run, train_dataset, val_dataset) -> TrainResult:
    from medicosam_training.dataset import collate_objects

    config, dist = run.config, run.dist
    out_dir = Path(config.out_dir)
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(run.checkpoint_path)
    if config.resume and run.checkpoint_path.exists():
        run.restore()
        logger.info("resuming from %s at iteration %d (epoch %d)", run.checkpoint_path, run.iteration, run.epoch)
    start_iteration = run.iteration
    per_epoch = len(_get_epoch_indices(train_dataset, config, dist, 0)) // config.batch_size
    if per_epoch == 0:
        raise InputError(f"the training set ({len(train_dataset)} images over {dist.world_size} processes) "
                            f"is smaller than one batch of {config.batch_size}: lower the batch size")
    epochs = config.epochs if config.epochs is not None else (math.inf if config.iterations else 1)
    total = min(config.iterations or math.inf, epochs * per_epoch)
    writer = _get_writer(out_dir) if dist.is_main else None
    progress = _get_progress(total, run.iteration, config.progress and dist.is_main, run.device)
    started = time.monotonic()
    run.set_train_mode()
    try:
        while run.epoch < epochs and run.iteration < total:
            if hasattr(train_dataset, "set_epoch"):
                train_dataset.set_epoch(run.epoch)
            indices = _get_epoch_indices(train_dataset, config, dist, run.epoch)
            loader = torch.utils.data.DataLoader(
                train_dataset, batch_size=config.batch_size, sampler=indices[run.epoch_batches * config.batch_size:],
                collate_fn=collate_objects, drop_last=True, **get_loader_options(config.num_workers, run.device),
                generator=torch.Generator().manual_seed(config.seed * 1000003 + run.epoch))
            for batch in loader:
                output = run.step(batch)
                progress.update(1)
                progress.set_postfix(loss=f"{float(output.loss.detach()):.4f}", dice=f"{float(output.dice):.3f}")
                if writer is not None and run.iteration % config.log_every == 0:
                    _log_step(writer, run, output)
                if run.iteration >= total:
                    break
                if run.iteration % config.save_every == 0:
                    run.save()
            if run.epoch_batches >= per_epoch:  # the epoch is complete
                if val_dataset is not None and dist.is_main:
                    metrics = run.validate(val_dataset)
                    run.validation.append({"epoch": run.epoch, **metrics})
                    if writer is not None:
                        for key, value in metrics.items():
                            writer.add_scalar(f"val/{key}", value, run.iteration)
                run.scheduler.step()
                run.epoch += 1
                run.epoch_batches = 0
            run.save()
    except KeyboardInterrupt:  # Ctrl-C: one line that says what is kept and how to go on
        raise Cancelled(f"stopped (Ctrl-C) at iteration {run.iteration}; {run.describe_kept()}: run the same "
                        "command with --resume to continue from it") from None
    finally:
        run.module.eval()
        progress.close()
        if writer is not None:
            writer.close()
    export, joint = _export(run) if dist.is_main else (None, None)
    return TrainResult(out_dir=out_dir, start_iteration=start_iteration, iteration=run.iteration,
                       epoch=run.epoch, checkpoint=run.checkpoint_path, export=export, joint_export=joint,
                       validation=run.validation, seconds=time.monotonic() - started)


@contextlib.contextmanager
def _holding_run_folder(run: _Run) -> Iterator[None]:
    """Hold the run folder's file lock (rank 0; `filelock`, as downloads do) for the whole run, so two
    trainings never mix their checkpoints and exports; a second one is refused, naming the holder."""
    from filelock import FileLock, Timeout

    out_dir, lock, refused = Path(run.config.out_dir), None, None
    if run.dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(out_dir / LOCK_NAME))
        try:
            lock.acquire(timeout=0)
            (out_dir / OWNER_NAME).write_text(f"process {os.getpid()} on {socket.gethostname()}, started "
                                              f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
        except Timeout:
            try:
                owner = (out_dir / OWNER_NAME).read_text().strip()
            except OSError:
                owner = "owner unknown"
            refused = RunError(f"{out_dir} is in use by another training ({owner}): wait for it to end, or train "
                               "into another --out")
    if not run.everyone(refused is None):
        raise refused or RunError(f"rank 0 could not lock {out_dir}: see its message")
    try:
        yield
    finally:
        if lock is not None:
            with contextlib.suppress(OSError):
                (out_dir / OWNER_NAME).unlink()
            lock.release()


def _is_disk_full(error: BaseException) -> bool:
    """True when `error`, or an error it was raised from, is the system's "no space left" (or quota)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False


def _get_disk_full_error(folder: Path, what: str, kept: str, then: str) -> RunError:
    free = shutil.disk_usage(folder).free / 2**20
    return RunError(f"disk full: {what} does not fit in {folder} ({free:.1f} MB free there); {kept}. Free some "
                    f"space, then {then}")


def _export(run: _Run) -> Tuple[Path, Optional[Path]]:
    from medicosam.models.checkpoint import export_sam, export_sam_with_decoder

    out_dir = Path(run.config.out_dir)
    try:
        export = export_sam(run.module.sam, out_dir / EXPORT_NAME)
        decoder = run.module.semantic_decoder
        joint = (export_sam_with_decoder(run.module.sam, decoder.state_dict(), out_dir / JOINT_EXPORT_NAME)
                 if decoder is not None else None)
    except (OSError, RuntimeError) as error:
        if not _is_disk_full(error):
            raise
        raise _get_disk_full_error(out_dir, "the exported model", f"the checkpoint {run.checkpoint_path} (iteration "
                                   f"{run.saved_iteration}) is complete", f"`medicosam export {run.checkpoint_path} "
                                   f"{out_dir / EXPORT_NAME}`") from None
    return export, joint


def _get_writer(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise RunError("TensorBoard logging needs the tensorboard package: "
                            "pip install 'medicosam[training]'") from error
    return SummaryWriter(log_dir=str(out_dir / "logs"))


def _get_progress(total: float, initial: int, enabled: bool, device: torch.device):
    """The tqdm bar; on the CPU its label says how many threads run and why (they decide the speed)."""
    from tqdm import tqdm

    from medicosam.device import describe_threads

    label = f"training ({describe_threads()})" if device.type == "cpu" else "training"
    return tqdm(total=None if math.isinf(total) else int(total), initial=initial, disable=not enabled,
                desc=label, unit="it")


def _log_step(writer, run: _Run, output: ObjectiveOutput) -> None:
    scalars = {"loss": output.loss.detach(), "mask_loss": output.mask_loss, "iou_loss": output.iou_loss,
               "dice": output.dice, "semantic_loss": output.semantic_loss}
    for key, value in scalars.items():
        if value is not None:
            writer.add_scalar(f"train/{key}", float(value), run.iteration)
    writer.add_scalar("train/lr", run.optimizer.param_groups[0]["lr"], run.iteration)
