"""The interactive training objective: Algorithm 1 of the MedicoSAM paper (after SAM and micro-sam).

One iteration on a batch of images with up to `n_obj` object masks each:

1. the image encoder runs once per image (a frozen one as the predictor's fast path runs it:
   `get_frozen_embeddings`);
2. every object gets a first prompt: a box (probability `p_box`, edges jittered outward by
   `box_jitter`) or one random positive point; a lone point is decoded with the multimask head
   and the mask with the best *predicted* IoU is kept, a box with the single-mask head;
3. `n_steps` corrections follow, each adding one positive point from the false negatives and one
   negative point from the false positives of the kept mask (`medicosam.prompts`), plus, with
   probability `p_mask`, the kept mask's low-res logits (detached) as mask prompt;
4. every decoder pass adds a Dice loss (sigmoid, per object; the minimum over the three outputs of
   the multimask head) and the MSE between predicted and true IoU (all heads in use); the losses
   are averaged over the passes;
5. with `e_sem`, a segmentation decoder on the same encoder features predicts the union of the
   objects and its Dice loss is added (section 2.2).

All objects of all images go through one prompt-encoder and one mask-decoder call per pass, the
core's batched decoding (`medicosam.decoding`, the predictor's too), which also owns the rule
"a lone point gets the multimask head, the best predicted IoU is kept".

Differences from micro-sam's `SamTrainer` (the code MedicoSAM was trained with), each chosen to
follow the paper; the flag in brackets brings the original back:

- `n_steps` counts corrections, as in Algorithm 1 ("for j = 1 to n_steps" after the first
  prediction): the `medicosam` preset makes 1 + 8 decoder passes. micro-sam's `n_sub_iteration=8`
  makes 1 + 7 (use `n_steps=7`).
- The first prompt is drawn per object with `p_box`; micro-sam gives the whole batch a point on
  even and a box on odd iterations (`prompt_choice="alternate"`).
- The mask prompt is drawn per object and correction step, as in Algorithm 1; micro-sam draws it
  per image and step on one GPU (close to `"object"` with one object per image) and once per
  iteration under DDP (`mask_prompt_per="iteration"`).
- Every image keeps all its objects; micro-sam truncates each image to the batch's smallest
  object count (`truncate_objects=True`).
- The loss is a mean over images; micro-sam summed over the batch until Dec 2025
  (`normalise_by_batch=False`).
- The semantic loss joins the interactive loss in one backward pass, as Algorithm 1 line 42 says;
  micro-sam's `JointSamTrainer` makes a second optimizer step for the decoder.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medicosam.decoding import (
    decode_prompts,
    get_heads_in_play,
    get_kept_output,
    get_prompt_tokens,
    uses_multimask,
)
from medicosam.errors import DataError, InputError
from medicosam.prompts import CORRECTION_MODES, get_box, sample_correction_points, sample_point_in_mask

from .choices import PRESETS

#: Who shares one draw of the first prompt type: each object (Algorithm 1), the whole batch, or
#: nobody ("alternate": point on even, box on odd iterations, micro-sam's rule).
PROMPT_CHOICES = ("object", "batch", "alternate")

#: Who shares one draw of "use the previous logits as mask prompt": each object at each correction
#: step (Algorithm 1), all objects of one step, or all steps of one iteration (micro-sam under DDP).
MASK_PROMPT_SCOPES = ("object", "step", "iteration")

@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """Hyperparameters of Algorithm 1 plus switches for micro-sam's original behaviour.

    Attributes:
        n_obj: objects per image at most (the data samples them; extra ones are dropped here).
        n_steps: correction steps after the first prediction (decoder passes = n_steps + 1).
        p_box: probability that the first prompt is a box rather than one positive point.
        p_mask: probability of feeding the previous low-res logits as mask prompt in a correction.
        e_sem: also train a segmentation decoder on the union of the objects.
        box_jitter: outward jitter of box edges as a fraction of the side (micro-sam: 0.025).
        points_per_step: positive/negative pairs added per correction (Algorithm 1: 1).
        correction_mode: where correction clicks go, see `medicosam.prompts.CORRECTION_MODES`.
        prompt_choice: see `PROMPT_CHOICES`.
        mask_prompt_per: see `MASK_PROMPT_SCOPES`.
        truncate_objects: cut every image to the batch's smallest object count (micro-sam).
        normalise_by_batch: average the loss over images (True) or sum it (micro-sam until 2025-12).
    """

    n_obj: int = 5
    n_steps: int = 8
    p_box: float = 0.5
    p_mask: float = 0.5
    e_sem: bool = False
    box_jitter: float = 0.025
    points_per_step: int = 1
    correction_mode: str = "random"
    prompt_choice: str = "object"
    mask_prompt_per: str = "object"
    truncate_objects: bool = False
    normalise_by_batch: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.n_obj >= 1, f"n_obj={self.n_obj}: need at least 1 object per image"),
            (self.n_steps >= 0, f"n_steps={self.n_steps}: use 0 (no correction) or more"),
            (0.0 <= self.p_box <= 1.0, f"p_box={self.p_box}: a probability lies in [0, 1]"),
            (0.0 <= self.p_mask <= 1.0, f"p_mask={self.p_mask}: a probability lies in [0, 1]"),
            (self.box_jitter >= 0.0, f"box_jitter={self.box_jitter}: use 0 (exact box) or more"),
            (self.points_per_step >= 1, f"points_per_step={self.points_per_step}: use 1 or more"),
            (self.correction_mode in CORRECTION_MODES,
             f"correction_mode={self.correction_mode!r}: use one of {CORRECTION_MODES}"),
            (self.prompt_choice in PROMPT_CHOICES,
             f"prompt_choice={self.prompt_choice!r}: use one of {PROMPT_CHOICES}"),
            (self.mask_prompt_per in MASK_PROMPT_SCOPES,
             f"mask_prompt_per={self.mask_prompt_per!r}: use one of {MASK_PROMPT_SCOPES}"),
        ]
        errors = [message for ok, message in checks if not ok]
        if errors:
            raise InputError("invalid objective: " + "; ".join(errors))


def get_preset(name: str, **overrides) -> ObjectiveConfig:
    """The objective of a named finetuning strategy of the paper (section 2.2), with `overrides`."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    return ObjectiveConfig(**{**PRESETS[name], **overrides})


@dataclasses.dataclass
class StepRecord:
    """The prompts of one decoder pass, per object (what the schedule tests check)."""

    multimask: np.ndarray  # (N,) bool: decoded with the multimask head
    n_positive: np.ndarray  # (N,) int: positive points in the prompt
    n_negative: np.ndarray  # (N,) int: negative points in the prompt
    box: np.ndarray  # (N,) bool: a box is part of the prompt
    mask_prompt: np.ndarray  # (N,) bool: previous logits given as mask prompt


@dataclasses.dataclass
class ObjectiveOutput:
    """The loss to backpropagate and detached parts for logging."""

    loss: torch.Tensor
    mask_loss: torch.Tensor
    iou_loss: torch.Tensor
    semantic_loss: Optional[torch.Tensor]
    dice: torch.Tensor  # mean hard Dice of the last pass's kept masks over all objects
    n_objects: int
    steps: List[StepRecord]


def sample_box_use(n: int, config: ObjectiveConfig, rng: np.random.Generator, iteration: int) -> np.ndarray:
    """(n,) bool: which objects start from a box rather than a point (see `PROMPT_CHOICES`)."""
    if config.prompt_choice == "object":
        return rng.random(n) < config.p_box
    if config.prompt_choice == "batch":
        return np.full(n, rng.random() < config.p_box)
    alternating = 0.0 < config.p_box < 1.0
    return np.full(n, iteration % 2 == 1 if alternating else config.p_box >= 1.0)


def sample_mask_prompt_use(n: int, config: ObjectiveConfig, rng: np.random.Generator,
                           iteration_draw: bool) -> np.ndarray:
    """(n,) bool: which objects get their previous logits as mask prompt in this correction step.

    `iteration_draw` is the iteration's single draw, used when `mask_prompt_per="iteration"`.
    """
    if config.mask_prompt_per == "object":
        return rng.random(n) < config.p_mask
    if config.mask_prompt_per == "step":
        return np.full(n, rng.random() < config.p_mask)
    return np.full(n, iteration_draw)


def get_soft_dice_loss(probabilities: torch.Tensor, targets: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """1 - squared (V-Net) Dice over the last two dims, torch-em's `DiceLoss` used by micro-sam."""
    numerator = (probabilities * targets).sum(dim=(-2, -1))
    denominator = (probabilities * probabilities).sum(dim=(-2, -1)) + (targets * targets).sum(dim=(-2, -1))
    return 1.0 - 2.0 * numerator / denominator.clamp(min=eps)


def get_valid_objects(valid: torch.Tensor, config: ObjectiveConfig) -> torch.Tensor:
    """`valid` (B, n) limited to the first `n_obj` objects per image (and to the batch minimum if
    `truncate_objects`)."""
    rank = valid.long().cumsum(dim=1)
    limit = config.n_obj
    if config.truncate_objects:
        limit = min(limit, int(valid.sum(dim=1).min()))
    return valid & (rank <= limit)


def _get_image_mean(values: torch.Tensor, image_index: torch.Tensor, n_images: int,
                    normalise: bool) -> torch.Tensor:
    """Per-object values -> mean over each image's objects -> mean (or sum) over images."""
    sums = torch.zeros(n_images, dtype=values.dtype, device=values.device).index_add(0, image_index, values)
    counts = torch.bincount(image_index, minlength=n_images)
    per_image = sums[counts > 0] / counts[counts > 0]
    return per_image.mean() if normalise else per_image.sum()


def _get_semantic_loss(decoder: nn.Module, embeddings: torch.Tensor, foreground: torch.Tensor,
                       normalise: bool) -> torch.Tensor:
    """Dice of the (background, foreground) channels, summed over channels like micro-sam."""
    logits = decoder(embeddings).float()
    if logits.shape[-2:] != foreground.shape[-2:]:
        logits = F.interpolate(logits, foreground.shape[-2:], mode="bilinear", align_corners=False)
    target = foreground.float()
    target = torch.stack([1.0 - target, target], dim=1)
    per_image = get_soft_dice_loss(torch.sigmoid(logits), target).sum(dim=1)
    return per_image.mean() if normalise else per_image.sum()


class _PromptState:
    """Each object's growing prompt (numpy, CPU): the first box or point, then the correction clicks."""

    def __init__(self, targets: np.ndarray, config: ObjectiveConfig, rng: np.random.Generator,
                 iteration: int) -> None:
        n = len(targets)
        self.use_box = sample_box_use(n, config, rng, iteration)
        self.boxes = [get_box(t, config.box_jitter, rng) if b else None
                      for t, b in zip(targets, self.use_box)]
        self.points = [np.zeros((0, 2), np.float32) if b else sample_point_in_mask(t, rng)[None]
                       for t, b in zip(targets, self.use_box)]
        self.labels = [np.zeros(0, np.int64) if b else np.ones(1, np.int64) for b in self.use_box]

    def add_corrections(self, targets: np.ndarray, predictions: np.ndarray, config: ObjectiveConfig,
                        rng: np.random.Generator) -> None:
        for i, (target, prediction) in enumerate(zip(targets, predictions)):
            for _ in range(config.points_per_step):
                points, labels = sample_correction_points(target, prediction, rng, config.correction_mode)
                self.points[i] = np.concatenate([self.points[i], points])
                self.labels[i] = np.concatenate([self.labels[i], labels])

    def get_record(self, multimask: np.ndarray, mask_prompt: np.ndarray) -> StepRecord:
        return StepRecord(multimask=multimask, box=self.use_box.copy(),
                          n_positive=np.array([int((lab == 1).sum()) for lab in self.labels]),
                          n_negative=np.array([int((lab == 0).sum()) for lab in self.labels]),
                          mask_prompt=mask_prompt)


def _get_step_losses(low_res: torch.Tensor, iou_pred: torch.Tensor, targets: torch.Tensor,
                     multimask: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-object Dice and IoU losses of one decoder pass, and the kept mask (hard, low-res logits).

    A lone point is judged by the multimask head (Dice: the best of its outputs; IoU: all of them),
    anything else by the single-mask head. The kept mask is the head's output with the best
    *predicted* IoU, as a user of SAM would get it.
    """
    n = len(targets)
    heads = get_heads_in_play(multimask, low_res.shape[1])
    used = np.flatnonzero(heads.any(axis=0)).tolist()  # upsample only the outputs some object uses
    in_play = torch.from_numpy(heads[:, used]).to(targets.device)
    low_res, iou_pred = low_res[:, used], iou_pred[:, used].float()
    logits = low_res.float()
    if logits.shape[-2:] != targets.shape[-2:]:  # SAM: 256 -> 1024; LiteMedSAM's logits are at its input size
        logits = F.interpolate(logits, targets.shape[-2:], mode="bilinear", align_corners=False)
    target = targets[:, None].float()
    dice_loss = get_soft_dice_loss(torch.sigmoid(logits), target)
    with torch.no_grad():  # float products and sums: twice as fast as bool and/or counts on the CPU
        hard = logits > 0
        predicted = hard.float()
        intersection = (predicted * target).sum(dim=(-2, -1))
        union = predicted.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1)) - intersection
        true_iou = intersection / union.clamp(min=1.0)
        best = get_kept_output(iou_pred, in_play)
        rows = torch.arange(n, device=targets.device)
        kept_hard, kept_logits = hard[rows, best], low_res[rows, best].unsqueeze(1).detach()
    mask_loss = torch.where(in_play, dice_loss, torch.full_like(dice_loss, float("inf"))).amin(dim=1)
    iou_loss = ((iou_pred - true_iou) ** 2 * in_play).sum(dim=1) / in_play.sum(dim=1)
    return mask_loss, iou_loss, kept_hard, kept_logits


def _get_hard_dice(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    overlap = 2.0 * (prediction & target).sum(dim=(-2, -1)).float()
    return overlap / (prediction.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1))).float().clamp(min=1.0)


def get_frozen_embeddings(sam: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The embeddings of an encoder nothing in it trains: no autograd graph, and a TinyViT's through its
    fp32 inference copy (BatchNorms folded, running statistics: what the predictor's fast path encodes
    with), outside autocast, since bf16 features drop LiteMedSAM's masks to IoU 0.92-0.95 against fp32.
    The decoder passes then train on the features inference gives them."""
    from medicosam.models.tinyvit import TinyViT, get_current_inference_encoder

    encoder = sam.image_encoder
    with torch.no_grad():
        if not isinstance(encoder, TinyViT):
            return encoder(sam.preprocess(images))
        with torch.autocast(images.device.type, enabled=False):
            return get_current_inference_encoder(encoder)(sam.preprocess(images).float())


def _backpropagate(tensors: List[torch.Tensor], grads: List[Optional[torch.Tensor]], device: torch.device) -> None:
    """Backward now, outside autocast (which wraps forwards only; the backward runs the recorded dtypes)."""
    with torch.autocast(device.type, enabled=False):
        torch.autograd.backward(tensors, grads)


def compute_objective(sam: nn.Module, images: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor,
                      config: ObjectiveConfig, rng: np.random.Generator,
                      semantic_decoder: Optional[nn.Module] = None, iteration: int = 0,
                      foreground: Optional[torch.Tensor] = None, backward: bool = False) -> ObjectiveOutput:
    """The loss of one training iteration (Algorithm 1) on a batch.

    Args:
        sam: a `segment_anything` Sam.
        images: (B, 3, S, S) float in [0, 255], resized and padded to S = the model's image size.
        masks: (B, n, S, S) bool object masks; valid: (B, n) bool, which of them are real objects.
        config: the objective; rng: source of all prompt randomness.
        semantic_decoder: encoder features -> (B, 2, S, S) logits; required when `config.e_sem`.
        iteration: the global iteration (only `prompt_choice="alternate"` uses it).
        foreground: (B, S, S) bool target of the semantic decoder; default: union of `masks`.
        backward: backpropagate each decoder pass as soon as its loss is known (into a detached copy
            of the embeddings), then the encoder and the semantic decoder once: the gradients of the
            returned loss, which comes back detached, with one pass's activations in memory instead of
            all 1 + n_steps (LiteMedSAM, 5 objects, 5 passes: peak 4.1 -> 1.9 GB with its encoder frozen,
            6.2 -> 4.0 GB trained). Not under DDP, whose gradient hooks expect one backward after its forward.
    """
    if config.e_sem and semantic_decoder is None:
        raise InputError("e_sem is on but no semantic decoder was given: pass semantic_decoder= "
                         "(the trainer builds one with medicosam_training.unetr.get_unetr_decoder)")
    size = sam.image_encoder.img_size
    if images.shape[-2:] != (size, size) or masks.shape[-2:] != (size, size):
        raise InputError(f"images {tuple(images.shape)} / masks {tuple(masks.shape)} must be "
                         f"{size} x {size}: resize the longest side to the model's image size and pad "
                         "as SAM does (medicosam.preprocessing.get_padded_image)")
    image_index, object_index = torch.nonzero(get_valid_objects(valid.bool(), config), as_tuple=True)
    n, device = len(image_index), images.device
    if n == 0:
        raise DataError("the batch holds no object: every image needs at least one valid mask")
    targets = masks[image_index, object_index].bool()
    targets_np = targets.cpu().numpy()

    if any(parameter.requires_grad for parameter in sam.image_encoder.parameters()):
        embeddings = sam.image_encoder(sam.preprocess(images))
    else:
        embeddings = get_frozen_embeddings(sam, images)
    streaming = backward and torch.is_grad_enabled()
    leaf = embeddings.detach().requires_grad_(embeddings.requires_grad) if streaming else embeddings
    object_embeddings = leaf[image_index]  # streaming: indexed again per pass (each backward frees its graph)
    prompts = _PromptState(targets_np, config, rng, iteration)
    normalise, passes = config.normalise_by_batch, config.n_steps + 1
    iteration_draw = config.mask_prompt_per == "iteration" and bool(rng.random() < config.p_mask)

    mask_losses, iou_losses, records = [], [], []
    kept_logits: Optional[torch.Tensor] = None
    kept_hard = targets  # replaced by the first pass's prediction before any correction reads it
    for step in range(config.n_steps + 1):
        if step == 0:
            use_mask = np.zeros(n, bool)
        else:
            prompts.add_corrections(targets_np, kept_hard.cpu().numpy(), config, rng)
            use_mask = sample_mask_prompt_use(n, config, rng, iteration_draw)
        multimask = np.array([uses_multimask(labels, box is not None, mask)
                              for labels, box, mask in zip(prompts.labels, prompts.boxes, use_mask)], bool)
        records.append(prompts.get_record(multimask, use_mask))
        coords, token_labels = get_prompt_tokens(prompts.points, prompts.labels, prompts.boxes)
        if streaming and step > 0:
            object_embeddings = leaf[image_index]
        low_res, iou_pred = decode_prompts(sam, object_embeddings, torch.from_numpy(coords).to(device),
                                           torch.from_numpy(token_labels).to(device), kept_logits,
                                           torch.from_numpy(use_mask).to(device))
        mask_loss, iou_loss, kept_hard, kept_logits = _get_step_losses(low_res, iou_pred, targets, multimask)
        if streaming:  # this pass's share of the loss below (the image mean is linear)
            share = (_get_image_mean(mask_loss, image_index, len(images), normalise)
                     + _get_image_mean(iou_loss, image_index, len(images), normalise)) / passes
            _backpropagate([share], [None], device)
            mask_loss, iou_loss = mask_loss.detach(), iou_loss.detach()
        mask_losses.append(mask_loss)
        iou_losses.append(iou_loss)

    mask_loss = _get_image_mean(torch.stack(mask_losses).mean(dim=0), image_index, len(images), normalise)
    iou_loss = _get_image_mean(torch.stack(iou_losses).mean(dim=0), image_index, len(images), normalise)
    loss = mask_loss + iou_loss
    semantic_loss = None
    if config.e_sem:
        if foreground is None:
            foreground = (masks.bool() & valid.bool()[:, :, None, None]).any(dim=1)
        semantic_loss = _get_semantic_loss(semantic_decoder, embeddings, foreground, normalise)
        loss = loss + semantic_loss
    if streaming:
        ends = [(semantic_loss, None)] if semantic_loss is not None else []
        if leaf.grad is not None:  # the passes' gradient of the embeddings, through the encoder once
            ends.append((embeddings, leaf.grad))
        if ends:
            _backpropagate([tensor for tensor, _ in ends], [grad for _, grad in ends], device)
        loss = loss.detach()
    return ObjectiveOutput(loss=loss, mask_loss=mask_loss.detach(), iou_loss=iou_loss.detach(),
                           semantic_loss=None if semantic_loss is None else semantic_loss.detach(),
                           dice=_get_hard_dice(kept_hard, targets).mean(), n_objects=n, steps=records)


class ObjectiveModule(nn.Module):
    """SAM (and the optional segmentation decoder) with the objective as `forward`.

    Training calls go through this module so DistributedDataParallel sees one forward per
    iteration and synchronises the gradients of every part, the decoder included.
    """

    def __init__(self, sam: nn.Module, config: ObjectiveConfig, semantic_decoder: Optional[nn.Module] = None):
        super().__init__()
        self.sam = sam
        self.config = config
        self.semantic_decoder = semantic_decoder

    def forward(self, images: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor,
                rng: np.random.Generator, iteration: int = 0,
                foreground: Optional[torch.Tensor] = None, backward: bool = False) -> ObjectiveOutput:
        return compute_objective(self.sam, images, masks, valid, self.config, rng, self.semantic_decoder,
                                 iteration, foreground, backward)
