"""Batched SAM prompt decoding, once: the predictor's objects and training's objects go through here.

One call decodes N objects, each with its own image embedding and its own prompt (points, a box or
not, a mask prompt or not), through SAM's prompt encoder and mask decoder weights. SAM's public
modules cannot do that in one call: `PromptEncoder.forward` takes one box / mask choice for the
whole batch, and `MaskDecoder.forward` repeats a single image embedding for every prompt. So
`embed_prompts` and `predict_masks` re-state those two forwards on SAM's own submodules
(`pe_layer`, `point_embeddings`, `not_a_point_embed`, `no_mask_embed`, `mask_downscaling`, the
decoder's tokens, transformer and heads); `Testing/test_decoding.py` holds them equal to the
public modules. They are the only code that touches those attributes.

Also here: SAM's rule for ambiguous prompts (`uses_multimask`: a lone positive point gets the
three-mask head) and which output is kept (`get_kept_output`: the best *predicted* IoU).

This module imports torch at import time: import it only where torch is needed.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

# Prompt token labels. SAM's prompt encoder reads -1 as "not a point" (padding: its embedding is
# replaced by `not_a_point_embed`), 0 / 1 as negative / positive points and embeds box corners with
# `point_embeddings[2]` / `[3]`; one label scheme lets every object's prompt share one tensor.
PAD, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = -1, 2, 3

#: Decoder outputs 1..M form the multimask head, output 0 is the single-mask head.
MULTIMASK = slice(1, None)


def uses_multimask(labels: Sequence[int], has_box: bool, has_mask: bool) -> bool:
    """True for a lone positive point and nothing else: SAM answers it with its three-mask head.

    One click is ambiguous (a part, the whole, a larger structure); SAM predicts three masks and the
    one with the best predicted IoU is kept. Any other prompt uses the single-mask head.
    """
    return len(labels) == 1 and int(labels[0]) == 1 and not has_box and not has_mask


def get_prompt_tokens(points: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                      boxes: Sequence[Optional[np.ndarray]]) -> Tuple[np.ndarray, np.ndarray]:
    """Every object's prompt as one (N, T, 2) float32 coordinate and (N, T) int64 label array.

    Coordinates are pixels of the model input (after the longest-side resize). Per object the tokens
    are laid out as SAM's prompt encoder does: the points, then either the two box corners or one
    padding point; objects with fewer tokens are padded at the end (label -1).
    """
    rows_xy, rows_labels = [], []
    for object_points, object_labels, box in zip(points, labels, boxes):
        if box is None:
            extra_xy, extra_labels = np.zeros((1, 2), np.float32), [PAD]
        else:
            extra_xy, extra_labels = np.reshape(box, (2, 2)), [BOX_TOP_LEFT, BOX_BOTTOM_RIGHT]
        rows_xy.append(np.concatenate([np.reshape(object_points, (-1, 2)), extra_xy]))
        rows_labels.append(np.concatenate([object_labels, extra_labels]))
    length = max(len(row) for row in rows_labels)
    coords = np.zeros((len(rows_xy), length, 2), np.float32)
    token_labels = np.full((len(rows_xy), length), PAD, np.int64)
    for i, (xy, row_labels) in enumerate(zip(rows_xy, rows_labels)):
        coords[i, :len(xy)] = xy
        token_labels[i, :len(row_labels)] = row_labels
    return coords, token_labels


def embed_prompts(prompt_encoder: nn.Module, coords: torch.Tensor, labels: torch.Tensor,
                  mask_logits: Optional[torch.Tensor] = None,
                  use_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sparse (N, T, C) and dense (N, C, h, w) embeddings, equal to SAM's `PromptEncoder` per object.

    Args:
        prompt_encoder: a `segment_anything` PromptEncoder.
        coords, labels: tokens from `get_prompt_tokens`, on the encoder's device.
        mask_logits: (N, 1, 4h, 4w) low-res logits as mask prompts, read only where `use_mask`.
        use_mask: (N,) bool: which objects get their `mask_logits`; None: all when logits are given.

    SAM embeds points and box corners alike (positional encoding of the pixel centre plus a learned
    type embedding, `not_a_point_embed` for padding); doing it for all tokens at once lets objects
    with and without a box, with and without a mask prompt share one call.
    """
    encoding = prompt_encoder.pe_layer.forward_with_coords(coords + 0.5, prompt_encoder.input_image_size)
    types = torch.cat([embedding.weight for embedding in prompt_encoder.point_embeddings])  # (4, C)
    typed = encoding + types[labels.clamp(min=0)]
    sparse = torch.where((labels == PAD).unsqueeze(-1), prompt_encoder.not_a_point_embed.weight.to(typed.dtype),
                         typed)
    n = len(coords)
    h, w = prompt_encoder.image_embedding_size
    dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(n, -1, h, w)
    if mask_logits is None:
        return sparse, dense
    if use_mask is None:
        return sparse, prompt_encoder.mask_downscaling(mask_logits)
    if not bool(use_mask.any()):
        return sparse, dense
    index = torch.nonzero(use_mask).squeeze(1)
    embedded = prompt_encoder.mask_downscaling(mask_logits[index])
    return sparse, dense.to(embedded.dtype).index_put((index,), embedded)


def predict_masks(mask_decoder: nn.Module, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                  sparse: torch.Tensor, dense: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """SAM's `MaskDecoder.predict_masks` with one image embedding per prompt instead of one in total.

    Args:
        mask_decoder: a `segment_anything` MaskDecoder.
        image_embeddings: (N, C, h, w), the embedding of each object's image (an expanded
            (1, C, h, w) for objects on one image).
        image_pe: (1, C, h, w) dense positional encoding (`prompt_encoder.get_dense_pe()`).
        sparse: (N, T, C) prompt tokens; dense: (N, C, h, w) mask-prompt embeddings.

    Returns:
        Low-res logits (N, 1 + M, 4h, 4w) and predicted IoUs (N, 1 + M) of all heads: output 0 is
        the single-mask head, outputs 1..M the multimask head (`MULTIMASK`).

    The image side runs channels-last, the layout the transformer's (N, hw, C) tokens already have:
    its inputs are then contiguous tokens (no transposed adds and copies), and the upscaled masks'
    features keep one layout forward and backward (mixed layouts made the GELU backward at 256 x 256
    six times slower). The same values as SAM's layout, bit for bit in fp32; a training pass of
    LiteMedSAM's decoder costs ~35 % less on a CPU.
    """
    n = sparse.shape[0]
    output_tokens = torch.cat([mask_decoder.iou_token.weight, mask_decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(n, -1, -1).to(sparse.dtype), sparse], dim=1)
    channels_last = torch.channels_last
    src = (image_embeddings + dense).contiguous(memory_format=channels_last)
    b, c, h, w = src.shape
    pe = image_pe.contiguous(memory_format=channels_last).expand(n, -1, -1, -1)
    hs, src = mask_decoder.transformer(src, pe, tokens)
    mask_tokens_out = hs[:, 1:1 + mask_decoder.num_mask_tokens, :]
    upscaled = mask_decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))  # a channels-last view
    hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :])
                            for i, mlp in enumerate(mask_decoder.output_hypernetworks_mlps)], dim=1)
    b, c, h, w = upscaled.shape
    pixels = upscaled.contiguous(memory_format=channels_last).permute(0, 2, 3, 1).reshape(b, h * w, c)
    masks = (pixels @ hyper_in.transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w).contiguous()
    return masks, mask_decoder.iou_prediction_head(hs[:, 0, :])


def decode_prompts(sam: nn.Module, image_embeddings: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor,
                   mask_logits: Optional[torch.Tensor] = None,
                   use_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every head's low-res logits and predicted IoUs for N objects (`embed_prompts` + `predict_masks`)."""
    sparse, dense = embed_prompts(sam.prompt_encoder, coords, labels, mask_logits, use_mask)
    return predict_masks(sam.mask_decoder, image_embeddings, sam.prompt_encoder.get_dense_pe(), sparse, dense)


def get_heads_in_play(multimask: np.ndarray, n_outputs: int) -> np.ndarray:
    """(N, n_outputs) bool: the outputs each object is judged by (its head: multimask or single)."""
    heads = np.zeros((len(multimask), n_outputs), bool)
    heads[:, 0] = ~multimask
    heads[:, MULTIMASK] = multimask[:, None]
    return heads


def get_kept_output(iou_pred: torch.Tensor, in_play: torch.Tensor) -> torch.Tensor:
    """(N,) index of the kept output per object: its head's output with the best predicted IoU."""
    iou_pred = iou_pred.float()
    return torch.where(in_play, iou_pred, torch.full_like(iou_pred, -float("inf"))).argmax(dim=1)
