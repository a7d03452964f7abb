"""The paper's non-SAM baselines for semantic segmentation, from MONAI: SwinUNETR and a residual U-Net.

They sit behind the SAM models' interface (RGB in [0, 255] at S x S, logits out, a config with
`ndim`, `n_classes`, `image_size`, `patch_depth`), so the same data, split, loss, training loop,
sliding-window inference and evaluation run them (`medicosam train-semantic --architecture
swin_unetr`). Inputs are scaled to [-1, 1]; grey images arrive as three equal channels.
nnU-Net, the paper's other baseline, runs on its own: `nnunet_export.py` writes the same split in
its raw-data format.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Tuple

import torch
from torch import nn

from medicosam.errors import InputError

from ..choices import ARCHITECTURES

#: SwinUNETR halves every spatial dim five times (patch embedding + four merges).
_SWIN_DIVISOR = 32
_UNET_LEVELS = 4


@dataclasses.dataclass
class BaselineConfig:
    """A MONAI baseline; stored in its checkpoints.

    Attributes:
        architecture: "unet" (MONAI `UNet`, 2 residual units per level) or "swin_unetr".
        ndim: 2 or 3.
        n_classes: output classes including background.
        image_size: in-plane input size S.
        patch_depth: slices per 3D patch (SwinUNETR: a multiple of 32).
        features: width of the first level (SwinUNETR's `feature_size`: a multiple of 12).
    """

    architecture: str
    ndim: int
    n_classes: int
    image_size: int
    patch_depth: int = 32
    features: int = 24

    def __post_init__(self) -> None:
        problems = []
        if self.architecture not in ARCHITECTURES:
            problems.append(f"architecture={self.architecture!r}: use one of {', '.join(ARCHITECTURES)}")
        if self.ndim not in (2, 3):
            problems.append(f"ndim={self.ndim}: use 2 or 3")
        if not 2 <= self.n_classes <= 256:
            problems.append(f"n_classes={self.n_classes}: use 2..256 classes, background included")
        if self.architecture == "swin_unetr":
            sizes = (self.image_size,) + ((self.patch_depth,) if self.ndim == 3 else ())
            if any(size % _SWIN_DIVISOR for size in sizes) or self.image_size < 2 * _SWIN_DIVISOR:
                problems.append(f"SwinUNETR needs image_size{' and patch_depth' if self.ndim == 3 else ''} to be "
                                f"multiples of {_SWIN_DIVISOR} and image_size >= {2 * _SWIN_DIVISOR} (its instance "
                                f"norms need more than one value at the coarsest level), got {sizes}")
            if self.features % 12:
                problems.append(f"SwinUNETR's feature_size must be a multiple of 12, got {self.features}")
        elif self.image_size % 2 ** _UNET_LEVELS:
            problems.append(f"the U-Net needs image_size to be a multiple of {2 ** _UNET_LEVELS}, "
                            f"got {self.image_size}")
        if problems:
            raise InputError("invalid baseline: " + "; ".join(problems))

    @property
    def kind(self) -> str:
        return self.architecture

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


class BaselineModel(nn.Module):
    """A MONAI network taking the SAM models' inputs: (B, 3, [D,] S, S) in [0, 255] -> logits."""

    def __init__(self, config: BaselineConfig, network: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images / 127.5 - 1.0)


def _get_unet_strides(config: BaselineConfig) -> Tuple[Any, ...]:
    """2 in-plane at every level; along depth 2 only while the patch depth stays divisible."""
    if config.ndim == 2:
        return (2,) * _UNET_LEVELS
    return tuple((2 if config.patch_depth % 2 ** (level + 1) == 0 else 1, 2, 2) for level in range(_UNET_LEVELS))


def build_baseline_model(config: BaselineConfig) -> BaselineModel:
    """The MONAI network of `config`, randomly initialised."""
    from monai.networks.nets import SwinUNETR, UNet

    if config.architecture == "swin_unetr":
        network = SwinUNETR(in_channels=3, out_channels=config.n_classes, feature_size=config.features,
                            spatial_dims=config.ndim)
    else:
        network = UNet(spatial_dims=config.ndim, in_channels=3, out_channels=config.n_classes,
                       channels=tuple(config.features * 2 ** level for level in range(_UNET_LEVELS + 1)),
                       strides=_get_unet_strides(config), num_res_units=2)
    return BaselineModel(config, network)
