"""MA-SAM depth adapters: SAM's 2D ViT encoder made volume-aware (paper section 2.4, 3D).

The slices of a patch are flattened into the batch, so SAM's blocks run unchanged per slice. Each
block gets two adapters, one before attention and one before the MLP; an adapter normalises the
tokens, projects them to a bottleneck, regroups them into a volume, mixes neighbouring slices with a
3x1x1 convolution, applies GELU, projects back and is added as a residual. As in the paper (and
micro-sam's `NDBlockWrapper`, bottleneck 384 for ViT-B = half the width) the adapters are randomly
initialised by default. `zero_init=True` zeroes their up-projections instead, so the adapted encoder
starts out computing exactly the pretrained 2D encoder (the usual adapter / LoRA choice); the other
adapter weights get gradients from the first step on that moves the up-projections.

Unlike micro-sam's wrapper, `AdaptedBlock` keeps the block's own submodules under their names
(`norm1`, `attn`, `norm2`, `mlp`), so `ImageEncoder3D`'s state dict is SAM's `image_encoder` state
plus `blocks.N.adapter1.*` / `adapter2.*`: pretrained SAM weights load into it unchanged.
"""

from __future__ import annotations

from typing import Optional

import torch
from segment_anything.modeling.image_encoder import window_partition, window_unpartition
from torch import nn


class DepthAdapter(nn.Module):
    """LayerNorm -> Linear(dim, b) -> Conv3d(b, b, (3, 1, 1)) across slices -> GELU -> Linear(b, dim)."""

    def __init__(self, dim: int, bottleneck: int, zero_init: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, bottleneck, bias=False)
        self.conv = nn.Conv3d(bottleneck, bottleneck, kernel_size=(3, 1, 1), padding=(1, 0, 0))
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim, bias=False)
        if zero_init:
            nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor, depth: int) -> torch.Tensor:
        """Tokens (B * depth, h, w, dim), slices of one volume consecutive -> the residual to add."""
        y = self.down(self.norm(x))
        n, h, w, c = y.shape
        y = y.reshape(n // depth, depth, h, w, c).permute(0, 4, 1, 2, 3)
        y = self.conv(y).permute(0, 2, 3, 4, 1).reshape(n, h, w, c)
        return self.up(self.act(y))


class AdaptedBlock(nn.Module):
    """A `segment_anything` ViT block with a depth adapter before its attention and before its MLP."""

    def __init__(self, block: nn.Module, bottleneck: int, zero_init: bool = False) -> None:
        super().__init__()
        dim = block.norm1.normalized_shape[0]
        self.norm1, self.attn, self.norm2, self.mlp = block.norm1, block.attn, block.norm2, block.mlp
        self.window_size = block.window_size
        self.adapter1 = DepthAdapter(dim, bottleneck, zero_init)
        self.adapter2 = DepthAdapter(dim, bottleneck, zero_init)

    def forward(self, x: torch.Tensor, depth: int) -> torch.Tensor:
        x = x + self.adapter1(x, depth)
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            height, width = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
        x = self.attn(x)
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, pad_hw, (height, width))
        x = shortcut + x
        x = x + self.adapter2(x, depth)
        return x + self.mlp(self.norm2(x))


class ImageEncoder3D(nn.Module):
    """SAM's `ImageEncoderViT` with depth adapters; takes over `image_encoder`'s modules.

    Args:
        image_encoder: a `segment_anything` ImageEncoderViT (its weights are kept).
        bottleneck: adapter width; default half the embedding width (micro-sam: 384 for ViT-B).
        zero_init: start the adapters silent (see the module docstring); default random, as the paper.
    """

    def __init__(self, image_encoder: nn.Module, bottleneck: Optional[int] = None, zero_init: bool = False) -> None:
        super().__init__()
        dim = image_encoder.patch_embed.proj.out_channels
        self.img_size = image_encoder.img_size
        self.patch_embed = image_encoder.patch_embed
        self.pos_embed = image_encoder.pos_embed
        self.blocks = nn.ModuleList([AdaptedBlock(block, bottleneck or dim // 2, zero_init)
                                     for block in image_encoder.blocks])
        self.neck = image_encoder.neck

    def forward(self, x: torch.Tensor, depth: int) -> torch.Tensor:
        """(B * depth, 3, S, S) normalised slices, each volume's slices consecutive -> (B * depth, C, S/16, S/16)."""
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x, depth)
        return self.neck(x.permute(0, 3, 1, 2))
