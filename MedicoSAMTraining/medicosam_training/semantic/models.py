"""SAM-based semantic segmentation models (paper section 2.4) and their checkpoints.

- `SemanticSam2D`: SAM's image encoder + the UNETR-like decoder (`medicosam_training.unetr`);
  prompt encoder and mask decoder are dropped. Output: one logit map per class (background = 0).
- `SemanticSam3D`: the encoder with MA-SAM depth adapters (`adapters.py`), slices flattened into the
  batch, the same 2D decoder per slice up to its last feature map, then a 3D fusion block
  (Conv3d 3x3x3 -> BN -> ReLU -> Conv3d 1x1x1 -> BN -> ReLU, medico-sam's `SimpleUNETR3D`) and a
  1x1x1 classifier.

Both return raw logits; the loss applies one softmax to them (Dice) and log-softmax (cross entropy),
and inference takes the argmax. micro-sam's semantic models end in a Sigmoid, and its loss then
applies softmax (Dice) and cross entropy on top of those sigmoid outputs, so neither term sees the
logits it assumes; that mismatch is not reproduced.

Inputs are RGB in [0, 255] at the model's input size S (S x S slices, resized and padded like SAM by
`data.get_model_input`); the models scale them as their encoder's family does (`InputTransform`: SAM's
pixel mean and std; LiteMedSAM's min-max of each slice to [0, 1], taken over the padded slice, which
equals LiteMedSAM's own when the slice's darkest pixel is 0, as the windowed slices' 0.5th percentile
makes it). Any family whose capabilities say `semantic_encoder` gives the encoder (SAM's ViT,
LiteMedSAM's TinyViT); the decoder upsamples by its input side / embedding side (`unetr.get_decoder_scale`:
16 for SAM, 4 for LiteMedSAM's 64 x 64 embedding at 256 px). The 3D model needs MA-SAM's adapters,
written for ViT encoders (`adapters_3d`).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch import nn

from medicosam.errors import InputError, ModelError
from medicosam.models.config import SamConfig
from medicosam.models.families import FAMILIES, ModelFamily, get_family
from medicosam.preprocessing import InputTransform, get_input_transform, get_scaled_pixels

from ..unetr import (
    UNETRDecoder,
    check_decoder_features,
    get_decoder_layout,
    get_decoder_scale,
    get_unetr_decoder,
    get_unetr_decoder_from_state,
)
from .adapters import ImageEncoder3D
from .encoder import get_sam_at_size

#: The checkpoint `kind` of the SAM-based models (baselines have their own, see `baselines.py`).
SAM_KIND = "sam"


@dataclasses.dataclass
class SemanticConfig:
    """Architecture of a SAM-based semantic model; stored in its checkpoints.

    Attributes:
        ndim: 2 (slice-wise model) or 3 (adapters + 3D fusion).
        n_classes: output classes including background 0.
        sam: the SAM-like model's architecture at the model's input size (its family's config: `SamConfig`,
            LiteMedSAM's `LiteSamConfig`).
        decoder_features: decoder width (micro-sam: 64).
        use_conv_transpose: transposed-convolution upsamplers (older micro-sam decoders).
        adapter_bottleneck: 3D adapter width; None: half the encoder width.
        fusion_channels: width of the 3D fusion block.
        patch_depth: slices per 3D patch (training patches and sliding-window inference).
        family: the name of the encoder's model family (checkpoints from before families read as SAM's).
    """

    ndim: int
    n_classes: int
    sam: Any
    decoder_features: int = 64
    use_conv_transpose: bool = False
    adapter_bottleneck: Optional[int] = None
    fusion_channels: int = 64
    patch_depth: int = 8
    family: str = "sam"

    def __post_init__(self) -> None:
        if isinstance(self.sam, Mapping):
            self.sam = self.get_family().get_module().read_config(self.sam)
        if self.ndim not in (2, 3):
            raise InputError(f"ndim={self.ndim}: semantic models are 2D or 3D")
        if not 2 <= self.n_classes <= 256:
            raise InputError(f"n_classes={self.n_classes}: use 2..256 classes, background included "
                                     "(label maps are written as 8-bit)")
        if self.patch_depth < 1:
            raise InputError(f"patch_depth={self.patch_depth}: use 1 or more slices")
        check_decoder_features(self.decoder_features)

    @property
    def image_size(self) -> int:
        return self.sam.image_size

    def get_family(self) -> ModelFamily:
        return get_family(self.family)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def get_normalised(images: torch.Tensor, transform: InputTransform) -> torch.Tensor:
    """(N, 3, S, S) in [0, 255] -> the encoder's input (`get_scaled_pixels`); refuses other sizes, which
    would be silently misplaced."""
    size = transform.image_size
    if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (size, size):
        raise InputError(f"expected RGB slices of {size} x {size} (N, 3, S, S), got "
                         f"{tuple(images.shape)}: resize and pad with semantic.data.get_model_input")
    return get_scaled_pixels(images, transform)


class SemanticSam2D(nn.Module):
    """(B, 3, S, S) images in [0, 255] -> (B, n_classes, S, S) logits."""

    def __init__(self, config: SemanticConfig, image_encoder: nn.Module, decoder: UNETRDecoder,
                 transform: InputTransform) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = image_encoder
        self.decoder = decoder
        self.transform = transform

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.image_encoder(get_normalised(images, self.transform)))


class SemanticSam3D(nn.Module):
    """(B, 3, D, S, S) volumes in [0, 255] -> (B, n_classes, D, S, S) logits."""

    def __init__(self, config: SemanticConfig, image_encoder: ImageEncoder3D, decoder: UNETRDecoder,
                 transform: InputTransform) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = image_encoder
        self.decoder = decoder
        self.transform = transform
        features, fusion = decoder.features, config.fusion_channels
        self.fusion_3d = nn.Sequential(
            nn.Conv3d(features, fusion, kernel_size=3, padding=1, bias=False), nn.BatchNorm3d(fusion),
            nn.ReLU(inplace=True),
            nn.Conv3d(fusion, fusion, kernel_size=1), nn.BatchNorm3d(fusion), nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv3d(fusion, config.n_classes, kernel_size=1)

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        if volumes.ndim != 5:
            raise InputError(f"expected volumes (B, 3, D, S, S), got {tuple(volumes.shape)}")
        b, c, d, h, w = volumes.shape
        slices = volumes.transpose(1, 2).reshape(b * d, c, h, w)
        features = self.decoder.forward_features(self.image_encoder(get_normalised(slices, self.transform), d))
        features = features.reshape(b, d, *features.shape[1:]).transpose(1, 2)
        return self.classifier(self.fusion_3d(features))


def _get_wrapped(config: SemanticConfig, image_encoder: nn.Module, decoder: UNETRDecoder, transform: InputTransform,
                 zero_init_adapters: bool = False) -> nn.Module:
    if config.ndim == 2:
        return SemanticSam2D(config, image_encoder, decoder, transform)
    return SemanticSam3D(config, ImageEncoder3D(image_encoder, config.adapter_bottleneck, zero_init_adapters),
                         decoder, transform)


def build_semantic_model(config: SemanticConfig) -> nn.Module:
    """A randomly initialised model of `config` (what checkpoints are loaded into)."""
    sam = config.get_family().get_module().build(config.sam)
    decoder = get_unetr_decoder(sam.image_encoder, config.n_classes if config.ndim == 2 else None,
                                config.decoder_features, config.use_conv_transpose, scale=get_decoder_scale(sam))
    return _get_wrapped(config, sam.image_encoder, decoder, get_input_transform(sam))


def check_semantic_family(family: ModelFamily, ndim: int) -> None:
    """InputError, in one line, where `family`'s encoder cannot feed a semantic model of `ndim` dimensions."""
    family.check("semantic_encoder", "be trained into a semantic model")
    if ndim == 3:
        family.check("adapters_3d", "be trained into a 3D semantic model (--ndim 3)")


def get_semantic_model(sam: nn.Module, sam_config: Any, n_classes: int, ndim: int = 2, *,
                       family: ModelFamily = FAMILIES["sam"], image_size: Optional[int] = None,
                       decoder_state: Optional[Mapping[str, Any]] = None, decoder_features: int = 64,
                       patch_depth: int = 8, adapter_bottleneck: Optional[int] = None, fusion_channels: int = 64,
                       zero_init_adapters: bool = False) -> nn.Module:
    """A semantic model on a pretrained SAM-like model's encoder (copied: `sam` is not changed).

    Args:
        sam, sam_config, family: the pretrained model (a `segment_anything` Sam, or LiteMedSAM's
            `TinyVitSam`), its architecture and its family (`LoadedSam`'s `.sam`, `.config`, `.family`).
        n_classes: output classes including background.
        ndim: 2 or 3 (3: SAM's ViT only).
        image_size: model input size; default the model's. Another size resizes a ViT's position
            embeddings (the paper's 3D models use 512); other encoders run at their own size only.
        decoder_state: a pretrained decoder (joint e_sem pretraining, `medicosam_vit_b_decoder`); its
            layout (width, upsampler variant) wins over `decoder_features`. Its 2-class head is kept
            only for a 2D model with 2 classes; otherwise the head is new. None: decoder from scratch.
        decoder_features, patch_depth, adapter_bottleneck, fusion_channels: see `SemanticConfig`.
        zero_init_adapters: 3D: start the adapters silent, so the encoder starts as the pretrained 2D
            one (`adapters.py`); default random, as the paper.
    """
    check_semantic_family(family, ndim)
    if image_size is not None and image_size != sam_config.image_size:
        if not isinstance(sam_config, SamConfig):
            raise InputError(f"--image-size {image_size}: {family.label} models run at their own "
                             f"{sam_config.image_size} px only; leave --image-size out")
        sam, sam_config = get_sam_at_size(sam, sam_config, image_size)
    encoder = copy.deepcopy(sam.image_encoder)
    out_channels, scale = n_classes if ndim == 2 else None, get_decoder_scale(sam)
    if decoder_state is None:
        decoder = get_unetr_decoder(encoder, out_channels, decoder_features, scale=scale)
        use_conv_transpose = False
    else:
        layout = get_decoder_layout(decoder_state)
        decoder = get_unetr_decoder_from_state(encoder, decoder_state, out_channels, scale=scale)
        decoder_features, use_conv_transpose = layout.initial_features, layout.use_conv_transpose
    config = SemanticConfig(ndim=ndim, n_classes=n_classes, sam=sam_config, decoder_features=decoder_features,
                            use_conv_transpose=use_conv_transpose, adapter_bottleneck=adapter_bottleneck,
                            fusion_channels=fusion_channels, patch_depth=patch_depth, family=family.name)
    model = _get_wrapped(config, encoder, decoder, get_input_transform(sam), zero_init_adapters)
    return model.to(next(sam.image_encoder.parameters()).device)


def save_semantic_model(model: nn.Module, path: Union[str, Path]) -> Path:
    """Write `{"kind", "config", "model_state"}` atomically; `load_semantic_model` reads it back."""
    from medicosam.models.checkpoint import save_atomically

    model = getattr(model, "module", model)  # DDP
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    kind = getattr(model.config, "kind", SAM_KIND)
    return save_atomically({"kind": kind, "config": model.config.to_dict(), "model_state": state}, path)


def load_semantic_model(path: Union[str, Path], device: str = "cpu") -> nn.Module:
    """A semantic model (SAM-based or baseline) from `save_semantic_model`'s file, in eval mode."""
    from medicosam.models.checkpoint import load_checkpoint_file

    from .baselines import BaselineConfig, build_baseline_model

    checkpoint = load_checkpoint_file(path)
    if not {"kind", "config", "model_state"} <= set(checkpoint):
        raise ModelError(f"{path} is not a semantic model checkpoint (keys: {', '.join(checkpoint)}); "
                                 "interactive SAM checkpoints are trained into one with `medicosam train-semantic`")
    if checkpoint["kind"] == SAM_KIND:
        model = build_semantic_model(SemanticConfig(**checkpoint["config"]))
    else:
        model = build_baseline_model(BaselineConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint["model_state"])
    return model.to(device).eval()
