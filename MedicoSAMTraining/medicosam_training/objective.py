"""The interactive training objective: Algorithm 1 of the MedicoSAM paper (after SAM and micro-sam).

One iteration on a batch of images with up to `n_obj` object masks each:

1. the image encoder runs once per image;
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

All objects of all images go through one prompt-encoder and one mask-decoder call per pass:
`predict_masks_batched` is SAM's `MaskDecoder.predict_masks` with per-object image embeddings
(SAM's own version repeats a single image's embedding for every prompt).

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

from medicosam.errors import MedicoSAMError
from medicosam.prompts import CORRECTION_MODES, get_box, sample_correction_points, sample_point_in_mask

from .choices import PRESETS

#: Who shares one draw of the first prompt type: each object (Algorithm 1), the whole batch, or
#: nobody ("alternate": point on even, box on odd iterations, micro-sam's rule).
PROMPT_CHOICES = ("object", "batch", "alternate")

#: Who shares one draw of "use the previous logits as mask prompt": each object at each correction
#: step (Algorithm 1), all objects of one step, or all steps of one iteration (micro-sam under DDP).
MASK_PROMPT_SCOPES = ("object", "step", "iteration")

# Prompt token labels. SAM's prompt encoder reads -1 as "not a point" (padding: its embedding is
# replaced by `not_a_point_embed`), 0 / 1 as negative / positive points and embeds box corners with
# `point_embeddings[2]` / `[3]`; one label scheme lets every object's prompt share one tensor.
_PAD, _BOX_TOP_LEFT, _BOX_BOTTOM_RIGHT = -1, 2, 3
_MULTIMASK = slice(1, None)  # decoder outputs 1..3 form the multimask head, output 0 the single mask


class ObjectiveError(MedicoSAMError, ValueError):
    """An objective setting or a batch the objective cannot use."""


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
            raise ObjectiveError("invalid objective: " + "; ".join(errors))


def get_preset(name: str, **overrides) -> ObjectiveConfig:
    """The objective of a named finetuning strategy of the paper (section 2.2), with `overrides`."""
    if name not in PRESETS:
        raise ObjectiveError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
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


def get_prompt_tokens(points: List[np.ndarray], labels: List[np.ndarray],
                      boxes: List[Optional[np.ndarray]]) -> Tuple[np.ndarray, np.ndarray]:
    """Every object's prompt as one (N, T, 2) float32 coordinate and (N, T) int64 label array.

    Per object the tokens are laid out as SAM's prompt encoder does: the points, then either the two
    box corners or one padding point; objects with fewer tokens are padded at the end (label -1).
    """
    rows_xy, rows_labels = [], []
    for object_points, object_labels, box in zip(points, labels, boxes):
        if box is None:
            extra_xy, extra_labels = np.zeros((1, 2), np.float32), [_PAD]
        else:
            extra_xy, extra_labels = np.reshape(box, (2, 2)), [_BOX_TOP_LEFT, _BOX_BOTTOM_RIGHT]
        rows_xy.append(np.concatenate([np.reshape(object_points, (-1, 2)), extra_xy]))
        rows_labels.append(np.concatenate([object_labels, extra_labels]))
    length = max(len(row) for row in rows_labels)
    coords = np.zeros((len(rows_xy), length, 2), np.float32)
    token_labels = np.full((len(rows_xy), length), _PAD, np.int64)
    for i, (xy, row_labels) in enumerate(zip(rows_xy, rows_labels)):
        coords[i, :len(xy)] = xy
        token_labels[i, :len(row_labels)] = row_labels
    return coords, token_labels


def embed_prompt_tokens(prompt_encoder: nn.Module, coords: torch.Tensor,
                        labels: torch.Tensor) -> torch.Tensor:
    """Sparse embeddings (N, T, C) of tokens from `get_prompt_tokens`, equal to SAM's prompt encoder.

    SAM embeds points and box corners the same way (positional encoding of the pixel centre plus a
    learned type embedding, `not_a_point_embed` for padding); doing it for all tokens at once lets
    objects with and without a box share one call.
    """
    encoding = prompt_encoder.pe_layer.forward_with_coords(coords + 0.5, prompt_encoder.input_image_size)
    types = torch.cat([embedding.weight for embedding in prompt_encoder.point_embeddings])  # (4, C)
    is_pad = (labels == _PAD).unsqueeze(-1)
    typed = encoding + types[labels.clamp(min=0)]
    return torch.where(is_pad, prompt_encoder.not_a_point_embed.weight.to(typed.dtype), typed)


def embed_mask_prompts(prompt_encoder: nn.Module, logits: Optional[torch.Tensor], use: torch.Tensor,
                       n: int) -> torch.Tensor:
    """Dense embeddings (N, C, h, w): previous logits where `use`, else SAM's `no_mask_embed`."""
    h, w = prompt_encoder.image_embedding_size
    dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(n, -1, h, w)
    if logits is None or not bool(use.any()):
        return dense
    index = torch.nonzero(use).squeeze(1)
    embedded = prompt_encoder.mask_downscaling(logits[index])
    return dense.to(embedded.dtype).index_put((index,), embedded)


def predict_masks_batched(mask_decoder: nn.Module, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                          sparse: torch.Tensor, dense: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """SAM's `MaskDecoder.predict_masks` with one image embedding per prompt instead of one in total.

    Args:
        mask_decoder: a `segment_anything` MaskDecoder.
        image_embeddings: (N, C, h, w), the embedding of each object's image.
        image_pe: (1, C, h, w) dense positional encoding (`prompt_encoder.get_dense_pe()`).
        sparse: (N, T, C) prompt tokens; dense: (N, C, h, w) mask-prompt embeddings.

    Returns:
        Low-res logits (N, 1 + M, 4h, 4w) and predicted IoUs (N, 1 + M) of all heads: output 0 is
        the single-mask head, outputs 1..M the multimask head.
    """
    n = sparse.shape[0]
    output_tokens = torch.cat([mask_decoder.iou_token.weight, mask_decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(n, -1, -1).to(sparse.dtype), sparse], dim=1)
    src = image_embeddings + dense
    b, c, h, w = src.shape
    hs, src = mask_decoder.transformer(src, image_pe.expand(n, -1, -1, -1), tokens)
    mask_tokens_out = hs[:, 1:1 + mask_decoder.num_mask_tokens, :]
    upscaled = mask_decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :])
                            for i, mlp in enumerate(mask_decoder.output_hypernetworks_mlps)], dim=1)
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
    return masks, mask_decoder.iou_prediction_head(hs[:, 0, :])


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
    heads = np.zeros((n, low_res.shape[1]), bool)
    heads[:, 0] = ~multimask
    heads[:, _MULTIMASK] = multimask[:, None]
    used = np.flatnonzero(heads.any(axis=0)).tolist()  # upsample only the outputs some object uses
    in_play = torch.from_numpy(heads[:, used]).to(targets.device)
    low_res, iou_pred = low_res[:, used], iou_pred[:, used].float()
    logits = F.interpolate(low_res.float(), targets.shape[-2:], mode="bilinear", align_corners=False)
    target = targets[:, None].float()
    dice_loss = get_soft_dice_loss(torch.sigmoid(logits), target)
    with torch.no_grad():  # float products and sums: twice as fast as bool and/or counts on the CPU
        hard = logits > 0
        predicted = hard.float()
        intersection = (predicted * target).sum(dim=(-2, -1))
        union = predicted.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1)) - intersection
        true_iou = intersection / union.clamp(min=1.0)
        best = torch.where(in_play, iou_pred, torch.full_like(iou_pred, -float("inf"))).argmax(dim=1)
        rows = torch.arange(n, device=targets.device)
        kept_hard, kept_logits = hard[rows, best], low_res[rows, best].unsqueeze(1).detach()
    mask_loss = torch.where(in_play, dice_loss, torch.full_like(dice_loss, float("inf"))).amin(dim=1)
    iou_loss = ((iou_pred - true_iou) ** 2 * in_play).sum(dim=1) / in_play.sum(dim=1)
    return mask_loss, iou_loss, kept_hard, kept_logits


def _get_hard_dice(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    overlap = 2.0 * (prediction & target).sum(dim=(-2, -1)).float()
    return overlap / (prediction.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1))).float().clamp(min=1.0)


def compute_objective(sam: nn.Module, images: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor,
                      config: ObjectiveConfig, rng: np.random.Generator,
                      semantic_decoder: Optional[nn.Module] = None, iteration: int = 0,
                      foreground: Optional[torch.Tensor] = None) -> ObjectiveOutput:
    """The loss of one training iteration (Algorithm 1) on a batch.

    Args:
        sam: a `segment_anything` Sam.
        images: (B, 3, S, S) float in [0, 255], resized and padded to S = the model's image size.
        masks: (B, n, S, S) bool object masks; valid: (B, n) bool, which of them are real objects.
        config: the objective; rng: source of all prompt randomness.
        semantic_decoder: encoder features -> (B, 2, S, S) logits; required when `config.e_sem`.
        iteration: the global iteration (only `prompt_choice="alternate"` uses it).
        foreground: (B, S, S) bool target of the semantic decoder; default: union of `masks`.
    """
    if config.e_sem and semantic_decoder is None:
        raise ObjectiveError("e_sem is on but no semantic decoder was given: pass semantic_decoder= "
                             "(the trainer builds one with medicosam_training.unetr.get_unetr_decoder)")
    size = sam.image_encoder.img_size
    if images.shape[-2:] != (size, size) or masks.shape[-2:] != (size, size):
        raise ObjectiveError(f"images {tuple(images.shape)} / masks {tuple(masks.shape)} must be "
                             f"{size} x {size}: resize the longest side to the model's image size and pad "
                             "as SAM does")
    image_index, object_index = torch.nonzero(get_valid_objects(valid.bool(), config), as_tuple=True)
    n, device = len(image_index), images.device
    if n == 0:
        raise ObjectiveError("the batch holds no object: every image needs at least one valid mask")
    targets = masks[image_index, object_index].bool()
    targets_np = targets.cpu().numpy()

    embeddings = sam.image_encoder(sam.preprocess(images))
    object_embeddings = embeddings[image_index]
    image_pe = sam.prompt_encoder.get_dense_pe()
    prompts = _PromptState(targets_np, config, rng, iteration)
    iteration_draw = config.mask_prompt_per == "iteration" and bool(rng.random() < config.p_mask)

    mask_losses, iou_losses, records = [], [], []
    kept_logits: Optional[torch.Tensor] = None
    kept_hard = targets  # replaced by the first pass's prediction before any correction reads it
    for step in range(config.n_steps + 1):
        if step == 0:
            use_mask, multimask = np.zeros(n, bool), ~prompts.use_box
        else:
            prompts.add_corrections(targets_np, kept_hard.cpu().numpy(), config, rng)
            use_mask, multimask = sample_mask_prompt_use(n, config, rng, iteration_draw), np.zeros(n, bool)
        records.append(prompts.get_record(multimask, use_mask))
        coords, token_labels = get_prompt_tokens(prompts.points, prompts.labels, prompts.boxes)
        sparse = embed_prompt_tokens(sam.prompt_encoder, torch.from_numpy(coords).to(device),
                                     torch.from_numpy(token_labels).to(device))
        dense = embed_mask_prompts(sam.prompt_encoder, kept_logits, torch.from_numpy(use_mask).to(device), n)
        low_res, iou_pred = predict_masks_batched(sam.mask_decoder, object_embeddings, image_pe,
                                                  sparse, dense)
        mask_loss, iou_loss, kept_hard, kept_logits = _get_step_losses(low_res, iou_pred, targets, multimask)
        mask_losses.append(mask_loss)
        iou_losses.append(iou_loss)

    normalise = config.normalise_by_batch
    mask_loss = _get_image_mean(torch.stack(mask_losses).mean(dim=0), image_index, len(images), normalise)
    iou_loss = _get_image_mean(torch.stack(iou_losses).mean(dim=0), image_index, len(images), normalise)
    loss = mask_loss + iou_loss
    semantic_loss = None
    if config.e_sem:
        if foreground is None:
            foreground = (masks.bool() & valid.bool()[:, :, None, None]).any(dim=1)
        semantic_loss = _get_semantic_loss(semantic_decoder, embeddings, foreground, normalise)
        loss = loss + semantic_loss
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
                foreground: Optional[torch.Tensor] = None) -> ObjectiveOutput:
        return compute_objective(self.sam, images, masks, valid, self.config, rng, self.semantic_decoder,
                                 iteration, foreground)
