"""The UNETR-like segmentation decoder on SAM's image-encoder output (paper section 2.4, e_sem).

It mirrors micro-sam's `get_unetr(..., use_skip_connection=False)` decoder (torch-em `UNETR`): a
pyramid of Deconv blocks built sequentially from the neck output z12, a `base` conv block, a
3-level `decoder` whose skip inputs come from that pyramid (centre-cropped in every dim, channels
included, as torch-em's `Decoder._crop` does: only the middle half of z9's channels reaches the
concat), `deconv_out`, `decoder_head` and `out_conv`. Module names follow micro-sam's
`decoder_state` (the UNETR state minus `encoder.*`), so its released decoder weights load as they are.

Two upsampler variants exist in micro-sam's files, with different keys:
- interpolation (torch-em's default since June 2025): bilinear x2 + 1x1 conv, keys `...conv.*`;
- transposed convolution (earlier default): `ConvTranspose2d(k=2, s=2)`, keys `...block.*`.
`get_decoder_layout` reads which one (and the widths) from a state dict, as micro-sam's `get_unetr`
does, and `get_unetr_decoder_from_state` builds the matching decoder and loads it.

Unlike the UNETR, this module does not own the encoder: it takes the encoder features, so the
training objective runs SAM's encoder once and feeds both SAM's mask decoder and this decoder, and
the 3D semantic model runs it per slice (`forward_features`, without `out_conv`).

Its output is at the model's input size: `scale` (`get_decoder_scale`) is input side / embedding
side, 16 for SAM (64 x 64 at 1024 px), 4 for LiteMedSAM (64 x 64 at 256 px). The four x2 stages of
each path upsample only as often as the scale needs (the first ones keep the size, their 1x1
convolution still runs), so every scale has micro-sam's keys and a LiteMedSAM decoder never computes
the 1024 x 1024 maps it would only shrink again.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from medicosam.errors import InputError, ModelError

#: Keys of a full UNETR state dict that belong to the encoder, not the decoder.
_ENCODER_PREFIX = "encoder."
#: The widest decoder built (micro-sam: 64): its first level is 8x this wide, so 512 is ~1 GB of
#: weights; larger values only exhaust memory.
MAX_DECODER_FEATURES = 512


def check_decoder_features(features: int) -> None:
    """Refuse a decoder width that cannot be built (checked by configs early, and by the builder)."""
    if not 1 <= features <= MAX_DECODER_FEATURES:
        raise InputError(f"decoder features {features} out of range: use 1 to {MAX_DECODER_FEATURES} "
                         "(micro-sam: 64; smaller for CPU runs)")


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
    """Bilinear x2 upsampling (`upsample`, else none) then a 1x1 conv, torch-em's `Upsampler2d` (keys `conv.*`)."""

    def __init__(self, in_channels: int, out_channels: int, upsample: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.conv(x)


class _TransposedUpsampler(nn.Module):
    """ConvTranspose2d(k=2, s=2), torch-em's `SingleDeconv2DBlock` (keys `block.*`)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def _get_upsampler(in_channels: int, out_channels: int, use_conv_transpose: bool, upsample: bool = True) -> nn.Module:
    if use_conv_transpose:
        return _TransposedUpsampler(in_channels, out_channels)  # UNETRDecoder allows it at scale 16 only
    return _Upsampler(in_channels, out_channels, upsample)


class _SingleConv(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _Deconv(nn.Module):
    """Upsample x2 -> Conv3x3 -> BatchNorm -> ReLU, torch-em's `Deconv2DBlock`."""

    def __init__(self, in_channels: int, out_channels: int, use_conv_transpose: bool, upsample: bool = True) -> None:
        super().__init__()
        self.block = nn.Sequential(_get_upsampler(in_channels, out_channels, use_conv_transpose, upsample),
                                   _SingleConv(out_channels), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def _center_crop(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Crop `x` to `shape` around its centre in every dim (channels too: the torch-em quirk)."""
    starts = [(have - want) // 2 for have, want in zip(x.shape, shape)]
    return x[tuple(slice(s, s + want) for s, want in zip(starts, shape))]


class _Decoder(nn.Module):
    def __init__(self, features: List[int], use_conv_transpose: bool, upsample: List[bool]) -> None:
        super().__init__()
        pairs = list(zip(features[:-1], features[1:]))
        self.blocks = nn.ModuleList([_ConvBlock(c_in, c_out) for c_in, c_out in pairs])
        self.samplers = nn.ModuleList([_get_upsampler(c_in, c_out, use_conv_transpose, up)
                                       for (c_in, c_out), up in zip(pairs, upsample)])

    def forward(self, x: torch.Tensor, skips: List[torch.Tensor]) -> torch.Tensor:
        for block, sampler, skip in zip(self.blocks, self.samplers, skips):
            x = sampler(x)
            x = block(torch.cat([x, _center_crop(skip, x.shape)], dim=1))
        return x


#: The upsampling factors a decoder can have (x2 stages: 1 to 4).
SCALES = (2, 4, 8, 16)


class UNETRDecoder(nn.Module):
    """Encoder features (B, C, h, w) -> logits (B, out_channels, scale h, scale w), i.e. at the model's input size.

    Args:
        in_channels: channels of the encoder output (SAM's neck: 256).
        out_channels: output channels; None builds no `out_conv` (the 3D model ends in its own head).
        initial_features: width of the last level; the levels are 8x, 4x, 2x, 1x this (micro-sam: 64).
        use_conv_transpose: transposed-convolution upsamplers instead of bilinear + 1x1 conv (scale 16 only).
        scale: input side / embedding side (`get_decoder_scale`; SAM: 16, LiteMedSAM: 4).
    """

    def __init__(self, in_channels: int, out_channels: Optional[int] = 2, initial_features: int = 64,
                 use_conv_transpose: bool = False, scale: int = 16) -> None:
        super().__init__()
        check_decoder_features(initial_features)
        if scale not in SCALES or use_conv_transpose and scale != 16:
            raise ModelError(f"a UNETR decoder upsamples {' or '.join(map(str, SCALES))} times (transposed "
                             f"convolutions: 16 only), not {scale}: the model's input side / embedding side")
        stages = SCALES.index(scale) + 1  # x2 stages needed: the last ones of each path upsample
        upsample = [stage >= 4 - stages for stage in range(4)]
        features = [initial_features * 2 ** i for i in range(4)][::-1]  # micro-sam: [512, 256, 128, 64]
        self.features = features[-1]
        self.scale = scale
        self.deconv1 = _Deconv(in_channels, features[0], use_conv_transpose, upsample[0])
        self.deconv2 = _Deconv(features[0], features[1], use_conv_transpose, upsample[1])
        self.deconv3 = _Deconv(features[1], features[2], use_conv_transpose, upsample[2])
        self.deconv4 = _Deconv(features[2], features[3], use_conv_transpose, upsample[3])
        self.base = _ConvBlock(in_channels, features[0])
        self.decoder = _Decoder(features, use_conv_transpose, upsample[:3])
        self.deconv_out = _get_upsampler(features[-1], features[-1], use_conv_transpose, upsample[3])
        self.decoder_head = _ConvBlock(2 * features[-1], features[-1])
        self.out_conv = None if out_channels is None else nn.Conv2d(features[-1], out_channels, 1)

    def forward_features(self, features: torch.Tensor) -> torch.Tensor:
        """The last feature map before `out_conv`: (B, initial_features, scale h, scale w)."""
        z9 = self.deconv1(features)
        z6 = self.deconv2(z9)
        z3 = self.deconv3(z6)
        z0 = self.deconv4(z3)
        x = self.decoder(self.base(features), [z9, z6, z3])
        return self.decoder_head(torch.cat([self.deconv_out(x), z0], dim=1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.out_conv is None:
            raise ModelError("this decoder was built without out_conv (out_channels=None): "
                                    "call forward_features")
        return self.out_conv(self.forward_features(features))


@dataclasses.dataclass(frozen=True)
class DecoderLayout:
    """The architecture a decoder state dict was saved from (see `get_decoder_layout`)."""

    in_channels: int
    out_channels: Optional[int]
    initial_features: int
    use_conv_transpose: bool


def get_decoder_state(state: Mapping[str, Any]) -> Dict[str, Any]:
    """The decoder's entries of `state` (a decoder state or a whole UNETR state: `encoder.*` dropped)."""
    return {key: value for key, value in state.items() if not key.startswith(_ENCODER_PREFIX)}


def get_decoder_layout(state: Mapping[str, Any]) -> DecoderLayout:
    """Read widths and upsampler variant from a decoder state dict (micro-sam's `get_unetr` rule).

    The variant is transposed convolution when any `decoder.samplers.*` key has a `.block.` part.
    """
    try:
        base = state["base.block.1.weight"]  # Conv2d(in_channels, 8 * initial_features, 3)
        head = state["decoder_head.block.1.weight"]  # Conv2d(2 * initial_features, initial_features, 3)
    except KeyError as error:
        raise ModelError(f"not a UNETR decoder state: it lacks {error.args[0]!r} "
                                f"(keys: {', '.join(list(state)[:6])} ...)") from None
    out = state.get("out_conv.weight")
    return DecoderLayout(
        in_channels=int(base.shape[1]), out_channels=None if out is None else int(out.shape[0]),
        initial_features=int(head.shape[0]),
        use_conv_transpose=any(key.startswith("decoder.samplers.") and ".block." in key for key in state))


def get_decoder_scale(sam: nn.Module) -> int:
    """Input side / embedding side of a SAM-like model: the decoder's `scale` (SAM: 1024 / 64; LiteMedSAM: 256 / 64)."""
    return sam.prompt_encoder.input_image_size[0] // sam.prompt_encoder.image_embedding_size[0]


def get_unetr_decoder(image_encoder: nn.Module, out_channels: Optional[int] = 2, initial_features: int = 64,
                      use_conv_transpose: bool = False, scale: int = 16) -> UNETRDecoder:
    """A decoder sized for `image_encoder`'s neck output (micro-sam uses `initial_features=64`).

    Smaller `initial_features` make the decoder affordable for tiny CPU models (tests, demo);
    only 64 matches micro-sam's released weights. `scale`: `get_decoder_scale(sam)`.
    """
    return UNETRDecoder(image_encoder.neck[2].out_channels, out_channels, initial_features, use_conv_transpose,
                        scale)


def get_unetr_decoder_from_state(image_encoder: nn.Module, state: Mapping[str, Any],
                                 out_channels: Union[int, str, None] = "saved", scale: int = 16) -> UNETRDecoder:
    """A decoder in the layout of `state` (variant and widths auto-detected) with its weights loaded.

    Args:
        image_encoder: the SAM image encoder whose neck output the decoder reads.
        state: a micro-sam / MedicoSAM decoder state (e.g. `load_decoder_state("medicosam_vit_b_decoder")`).
        out_channels: "saved" keeps the state's output head; a number (a new task's classes) or None
            (no head) keeps everything but `out_conv`, which is then freshly initialised or absent.
        scale: the model's `get_decoder_scale` (the layout of the weights does not show it).
    """
    state = get_decoder_state(state)
    layout = get_decoder_layout(state)
    neck_channels = image_encoder.neck[2].out_channels
    if layout.in_channels != neck_channels:
        raise ModelError(f"the decoder reads {layout.in_channels}-channel features but this encoder's "
                                f"neck gives {neck_channels}: decoder and SAM model come from different "
                                "architectures")
    if out_channels == "saved":
        out_channels = layout.out_channels
    decoder = UNETRDecoder(layout.in_channels, out_channels, layout.initial_features, layout.use_conv_transpose,
                           scale)
    keep_head = out_channels is not None and out_channels == layout.out_channels
    load_decoder_weights(decoder, {k: v for k, v in state.items() if keep_head or not k.startswith("out_conv.")})
    return decoder


def load_decoder_weights(decoder: UNETRDecoder, state: Mapping[str, Any]) -> None:
    """Load `state` into `decoder`; only `out_conv` may be missing (a new head). Errors list the mismatch."""
    own = decoder.state_dict()
    missing = [key for key in own if key not in state and not key.startswith("out_conv.")]
    unexpected = [key for key in state if key not in own]
    shapes = [f"{key} {tuple(state[key].shape)} (decoder: {tuple(own[key].shape)})"
              for key in own if key in state and tuple(state[key].shape) != tuple(own[key].shape)]
    problems = [f"{name}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                for name, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("other shapes", shapes)) if keys]
    if problems:
        raise ModelError("the decoder state does not fit this decoder (build it with "
                                "get_unetr_decoder_from_state to match the saved layout): " + "; ".join(problems))
    decoder.load_state_dict(state, strict=False)
