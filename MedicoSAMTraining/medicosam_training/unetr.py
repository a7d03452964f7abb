"""The UNETR-like segmentation decoder on SAM's image-encoder output (paper section 2.4, e_sem).

It mirrors micro-sam's `get_unetr(..., use_skip_connection=False)` decoder (torch-em `UNETR`,
bilinear upsamplers): a pyramid of Deconv blocks built sequentially from the neck output z12,
a `base` conv block, a 3-level `decoder` whose skip inputs come from that pyramid (centre-cropped
in every dim, channels included, as torch-em does), `deconv_out`, `decoder_head` and `out_conv`.
Module names follow micro-sam's `decoder_state` (the UNETR state minus `encoder.*`), so its
released decoder weights can be loaded by the semantic module; the conv-transpose upsampler
variant is left to that module.

Unlike the UNETR, this module does not own the encoder: it takes the encoder features, so the
training objective runs SAM's encoder once and feeds both SAM's mask decoder and this decoder.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn


class _ConvBlock(nn.Module):
    """(InstanceNorm -> Conv3x3 -> ReLU) x 2, torch-em's `ConvBlock2d`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.InstanceNorm2d(in_channels), nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.InstanceNorm2d(out_channels), nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _Upsampler(nn.Module):
    """Bilinear x2 upsampling then a 1x1 conv, torch-em's `Upsampler2d`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


class _SingleConv(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _Deconv(nn.Module):
    """Upsample x2 -> Conv3x3 -> BatchNorm -> ReLU, torch-em's `Deconv2DBlock`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(_Upsampler(in_channels, out_channels), _SingleConv(out_channels),
                                   nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def _center_crop(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Crop `x` to `shape` around its centre in every dim (channels too: the torch-em quirk)."""
    starts = [(have - want) // 2 for have, want in zip(x.shape, shape)]
    return x[tuple(slice(s, s + want) for s, want in zip(starts, shape))]


class _Decoder(nn.Module):
    def __init__(self, features: List[int]) -> None:
        super().__init__()
        pairs = list(zip(features[:-1], features[1:]))
        self.blocks = nn.ModuleList([_ConvBlock(c_in, c_out) for c_in, c_out in pairs])
        self.samplers = nn.ModuleList([_Upsampler(c_in, c_out) for c_in, c_out in pairs])

    def forward(self, x: torch.Tensor, skips: List[torch.Tensor]) -> torch.Tensor:
        for block, sampler, skip in zip(self.blocks, self.samplers, skips):
            x = sampler(x)
            x = block(torch.cat([x, _center_crop(skip, x.shape)], dim=1))
        return x


class UNETRDecoder(nn.Module):
    """Encoder features (B, C, h, w) -> logits (B, out_channels, 16 h, 16 w), i.e. at SAM's input size."""

    def __init__(self, in_channels: int, out_channels: int = 2, initial_features: int = 64) -> None:
        super().__init__()
        features = [initial_features * 2 ** i for i in range(4)][::-1]  # micro-sam: [512, 256, 128, 64]
        self.deconv1 = _Deconv(in_channels, features[0])
        self.deconv2 = _Deconv(features[0], features[1])
        self.deconv3 = _Deconv(features[1], features[2])
        self.deconv4 = _Deconv(features[2], features[3])
        self.base = _ConvBlock(in_channels, features[0])
        self.decoder = _Decoder(features)
        self.deconv_out = _Upsampler(features[-1], features[-1])
        self.decoder_head = _ConvBlock(2 * features[-1], features[-1])
        self.out_conv = nn.Conv2d(features[-1], out_channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z9 = self.deconv1(features)
        z6 = self.deconv2(z9)
        z3 = self.deconv3(z6)
        z0 = self.deconv4(z3)
        x = self.decoder(self.base(features), [z9, z6, z3])
        x = self.decoder_head(torch.cat([self.deconv_out(x), z0], dim=1))
        return self.out_conv(x)


def get_unetr_decoder(image_encoder: nn.Module, out_channels: int = 2,
                      initial_features: int = 64) -> UNETRDecoder:
    """A decoder sized for `image_encoder`'s neck output (micro-sam uses `initial_features=64`).

    Smaller `initial_features` make the decoder affordable for tiny CPU models (tests, demo);
    only 64 matches micro-sam's released weights.
    """
    return UNETRDecoder(image_encoder.neck[2].out_channels, out_channels, initial_features)
