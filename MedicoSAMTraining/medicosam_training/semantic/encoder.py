"""SAM image encoders at another input size, with their position information carried over.

The 3D model of the paper runs SAM at 512 px. A 1024-px checkpoint has a 64x64 absolute position
embedding and 127-long relative-position tables in its global-attention blocks; a 512-px encoder
needs 32x32 and 63. micro-sam's flexible loading skips these mismatched tensors, so they keep their
zero initialisation and the pretrained position information is lost. Here they are resized:
`pos_embed` bicubically (antialiased when shrinking), the global `rel_pos_h/w` tables linearly,
exactly as `segment_anything`'s own `get_rel_pos` resizes a table at run time. Windowed blocks keep
their tables (the window does not change with the image). Resizing to the same size is the
identity: the tensors are returned untouched.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Tuple

import torch
import torch.nn.functional as F

from medicosam.errors import InputError
from medicosam.models.config import SamConfig, build_sam

_ENCODER = "image_encoder."


def get_resized_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, g, g, C) absolute position embedding -> (1, grid, grid, C), bicubic; unchanged when g == grid."""
    if pos_embed.shape[1] == grid and pos_embed.shape[2] == grid:
        return pos_embed
    resized = F.interpolate(pos_embed.permute(0, 3, 1, 2).float(), size=(grid, grid), mode="bicubic",
                            align_corners=False, antialias=grid < pos_embed.shape[1])
    return resized.permute(0, 2, 3, 1).to(pos_embed.dtype)


def get_resized_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """(L, C) relative-position table -> (length, C), linear like `segment_anything`'s `get_rel_pos`.

    Unchanged when L == length.
    """
    if rel_pos.shape[0] == length:
        return rel_pos
    resized = F.interpolate(rel_pos.float().T[None], size=length, mode="linear")
    return resized[0].T.to(rel_pos.dtype)


def get_resized_sam_state(state: Mapping[str, Any], config: SamConfig,
                          image_size: int) -> Tuple[Dict[str, Any], SamConfig]:
    """(state, config) of the same SAM at input size `image_size` (see the module docstring).

    Args:
        state: a plain SAM state dict (or just its `image_encoder.*` part) for `config`.
        config: the architecture `state` was saved for; its `encoder_global_attn_indexes` say which
            blocks' tables follow the image size.
        image_size: the new input side, a multiple of the patch size.
    """
    if image_size % config.patch_size:
        raise InputError(f"image_size {image_size} is not a multiple of the patch size {config.patch_size}: "
                         f"use a multiple of {config.patch_size}")
    new_config = dataclasses.replace(config, image_size=image_size)
    grid = new_config.embedding_size
    resized = dict(state)
    if _ENCODER + "pos_embed" in state:
        resized[_ENCODER + "pos_embed"] = get_resized_pos_embed(state[_ENCODER + "pos_embed"], grid)
    for index in config.encoder_global_attn_indexes:
        for axis in ("h", "w"):
            key = f"{_ENCODER}blocks.{index}.attn.rel_pos_{axis}"
            if key in state:
                resized[key] = get_resized_rel_pos(state[key], 2 * grid - 1)
    return resized, new_config


def get_sam_at_size(sam: torch.nn.Module, config: SamConfig, image_size: int):
    """(new `segment_anything` Sam for `image_size` px with a copy of `sam`'s weights, its config)."""
    state, new_config = get_resized_sam_state(sam.state_dict(), config, image_size)
    with torch.device(sam.image_encoder.pos_embed.device):
        resized = build_sam(new_config)
    resized.load_state_dict(state)
    return resized, new_config
