"""TinyViT, the image encoder of MobileSAM (micro-sam `vit_t`, 1024 px) and LiteMedSAM (256 px).

Written here from TinyViT's design (Wu et al., ECCV 2022, as MobileSAM adapted it for SAM): a
convolutional stem, one stage of MobileNet-style inverted residual blocks (MBConv), then stages of
windowed self-attention blocks with a learned bias per (|dy|, |dx|) offset inside a window and a
depthwise convolution between attention and MLP, patch merging between stages, and SAM's neck
(1x1 and 3x3 convolutions with channel LayerNorms) to 256 channels. Module and parameter names
follow the published checkpoints, so `image_encoder.*` of MobileSAM and LiteMedSAM files load
with `strict=True`.

Activations travel as (B, H, W, C) arrays: tokens for LayerNorm, attention and MLP, and, seen
through `permute`, channels-last images for the convolutions, so no layer copies to change layout.
Attention runs through `scaled_dot_product_attention` with the offset bias as its additive mask.
Convolutions are followed by BatchNorm (training needs it); `get_inference_encoder` returns a copy
for inference with each pair folded into one convolution and each GELU computed by the layer
before it (oneDNN on CPUs), optionally in bfloat16.

This module imports torch at import time: import it only where torch is needed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import weakref
from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError

#: The side of the embedding grid SAM's prompt encoder and mask decoder work on (both published
#: TinyViT SAMs): the input size of a checkpoint follows from its patch embedding's stride.
SAM_GRID = 64

#: The largest value each `TinyVitConfig` number may take: far above MobileSAM / LiteMedSAM (320
#: wide, 12 blocks, windows of 14), and low enough that sizes read from a corrupt or hostile
#: checkpoint cannot make the builder ask for terabytes (a window of w tokens a side indexes a
#: w^2 x w^2 bias table in every block).
CONFIG_LIMITS: Dict[str, float] = {
    "image_size": 4096, "in_chans": 16, "embed_dim": 4096, "depth": 64, "num_heads": 128, "window_size": 32,
    "stages": 8, "mlp_ratio": 16, "mbconv_expand_ratio": 16, "local_conv_size": 15, "out_chans": 4096,
}

#: The patch embedding's kernel -> (stride, padding) of each of its two convolutions: 3 is
#: MobileSAM's (two 3x3 convolutions of stride 2: input / 4), 1 LiteMedSAM's (two 1x1: input / 1).
PATCH_KERNELS: Dict[int, Tuple[int, int]] = {3: (2, 1), 1: (1, 0)}


@dataclasses.dataclass(frozen=True)
class TinyVitConfig:
    """Every size of a TinyViT encoder (defaults: MobileSAM's 5.7 M-parameter encoder at 1024 px).

    `num_heads` and `window_sizes` belong to the attention stages (all but the first, which is
    convolutional); `embed_dims` and `depths` to every stage. The last patch merging keeps the
    resolution (as in every SAM TinyViT), so the output grid is image_size / patch stride / 4 for
    four stages: 64 x 64 for both published encoders.
    """

    image_size: int = 1024
    patch_kernel: int = 3
    in_chans: int = 3
    embed_dims: Tuple[int, ...] = (64, 128, 160, 320)
    depths: Tuple[int, ...] = (2, 2, 6, 2)
    num_heads: Tuple[int, ...] = (4, 5, 10)
    window_sizes: Tuple[int, ...] = (7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    out_chans: int = 256

    def __post_init__(self) -> None:
        stages = len(self.embed_dims)
        values = {
            "image_size": [self.image_size], "in_chans": [self.in_chans], "embed_dim": self.embed_dims,
            "depth": self.depths, "num_heads": self.num_heads, "window_size": self.window_sizes,
            "stages": [stages], "mlp_ratio": [self.mlp_ratio], "mbconv_expand_ratio": [self.mbconv_expand_ratio],
            "local_conv_size": [self.local_conv_size], "out_chans": [self.out_chans],
        }
        problems = [f"{name}={value} (allowed: 1 to {CONFIG_LIMITS[name]})"
                    for name, group in values.items() for value in group if not 1 <= value <= CONFIG_LIMITS[name]]
        if stages < 2 or not len(self.depths) == stages == len(self.num_heads) + 1 == len(self.window_sizes) + 1:
            problems.append(f"{stages} stages with depths {self.depths}, heads {self.num_heads} and windows "
                            f"{self.window_sizes} (want one conv stage, then heads and windows per attention stage)")
        problems += [f"embed dim {dim} not divisible by {heads} heads"
                     for dim, heads in zip(self.embed_dims[1:], self.num_heads) if dim % heads]
        if self.patch_kernel not in PATCH_KERNELS:
            problems.append(f"patch kernel {self.patch_kernel} (known: {sorted(PATCH_KERNELS)})")
        if self.embed_dims[0] % 2:
            problems.append(f"first embed dim {self.embed_dims[0]} is odd")
        if self.local_conv_size % 2 == 0:
            problems.append(f"local conv size {self.local_conv_size} is even")
        if not problems and self.image_size % (self.patch_stride * 2 ** (stages - 2)):
            problems.append(f"image size {self.image_size} not divisible by {self.patch_stride * 2 ** (stages - 2)}")
        if problems:
            raise ModelError("TinyViT sizes out of range: " + "; ".join(problems))

    @property
    def patch_stride(self) -> int:
        return PATCH_KERNELS[self.patch_kernel][0] ** 2

    @property
    def embedding_size(self) -> int:
        """Side of the output grid (the image embedding is out_chans x this x this)."""
        return self.image_size // self.patch_stride // 2 ** (len(self.embed_dims) - 2)


#: MobileSAM's encoder (micro-sam `vit_t`): 1024 px, 3x3 patch embedding.
MOBILESAM_ENCODER = TinyVitConfig()
#: LiteMedSAM's encoder: MobileSAM's sizes at 256 px with a 1x1 patch embedding.
LITEMEDSAM_ENCODER = TinyVitConfig(image_size=256, patch_kernel=1)


class ConvNorm(nn.Sequential):
    """A bias-free convolution followed by BatchNorm (`c`, `bn`), foldable into one convolution."""

    def __init__(self, in_chans: int, out_chans: int, kernel: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1, bn_weight: float = 1.0):
        super().__init__()
        self.c = nn.Conv2d(in_chans, out_chans, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(self.bn.weight, bn_weight)

    @torch.no_grad()
    def get_folded(self, kind: type = nn.Conv2d) -> nn.Conv2d:
        """One convolution (of class `kind`) with a bias, computing what this pair computes in eval mode."""
        conv, bn = self.c, self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        folded = kind(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      groups=conv.groups, bias=True, device=conv.weight.device, dtype=conv.weight.dtype)
        folded.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        folded.bias.copy_(bn.bias - bn.running_mean * scale)
        return folded


def _conv(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module` (a convolution) applied to (B, H, W, C) `x`, seen as a channels-last image."""
    return module(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def _can_fuse(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True where oneDNN can apply a GELU inside the convolution or matrix product of `x` and `weight`
    (CPU, float32 or native bf16; under autocast, where they differ in dtype, the unfused ops run)."""
    if x.device.type != "cpu" or x.dtype != weight.dtype or not torch.backends.mkldnn.is_available():
        return False
    return x.dtype == torch.float32 or x.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class ConvGelu(nn.Conv2d):
    """gelu(conv(x)). On CPUs oneDNN applies the GELU while it writes the output: one pass over the
    largest activations of the encoder instead of three (TorchInductor's own fusion, called eagerly)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _can_fuse(x, self.weight):
            return F.gelu(super().forward(x))
        return torch.ops.mkldnn._convolution_pointwise(
            x.contiguous(memory_format=torch.channels_last), self.weight, self.bias, list(self.padding),
            list(self.stride), list(self.dilation), self.groups, "gelu", [], "none")


class LinearGelu(nn.Linear):
    """gelu(linear(x)), one oneDNN kernel on CPUs (see `ConvGelu`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _can_fuse(x, self.weight):
            return F.gelu(super().forward(x))
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.weight, self.bias, "gelu", [], "none")


class PatchEmbed(nn.Module):
    """The stem: two convolutions (3x3 stride 2 each, or 1x1) with a GELU between."""

    #: (layer, its activation) pairs `get_inference_encoder` fuses, here and in the classes below
    gelu_pairs = (("seq.0", "seq.1"),)

    def __init__(self, config: TinyVitConfig):
        super().__init__()
        stride, padding = PATCH_KERNELS[config.patch_kernel]
        dim, kernel = config.embed_dims[0], config.patch_kernel
        self.seq = nn.Sequential(ConvNorm(config.in_chans, dim // 2, kernel, stride, padding), nn.GELU(),
                                 ConvNorm(dim // 2, dim, kernel, stride, padding))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, H', W', dim)."""
        return self.seq(images.contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project (zero-initialised), + input, GELU."""

    gelu_pairs = (("conv1", "act1"), ("conv2", "act2"))

    def __init__(self, dim: int, expand_ratio: float):
        super().__init__()
        hidden = round(dim * expand_ratio)
        self.conv1, self.act1 = ConvNorm(dim, hidden), nn.GELU()
        self.conv2, self.act2 = ConvNorm(hidden, hidden, 3, 1, 1, groups=hidden), nn.GELU()
        self.conv3 = ConvNorm(hidden, dim, bn_weight=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act2(_conv(self.conv2, self.act1(_conv(self.conv1, x))))
        return F.gelu(x + _conv(self.conv3, y))


class PatchMerging(nn.Module):
    """Between stages: 1x1 to the next width, 3x3 depthwise (stride 2, or 1 before the last stage), 1x1."""

    gelu_pairs = MBConv.gelu_pairs

    def __init__(self, dim: int, out_dim: int, stride: int):
        super().__init__()
        self.conv1, self.act1 = ConvNorm(dim, out_dim), nn.GELU()
        self.conv2, self.act2 = ConvNorm(out_dim, out_dim, 3, stride, 1, groups=out_dim), nn.GELU()
        self.conv3 = ConvNorm(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act2(_conv(self.conv2, self.act1(_conv(self.conv1, x))))
        return _conv(self.conv3, x)


def get_offset_index(window: int) -> torch.Tensor:
    """(w^2, w^2) index into TinyViT's bias table: |dy| * w + |dx| for each pair of window positions.

    That is the order in which TinyViT numbers the offsets (first seen, walking the pairs of
    row-major positions from position (0, 0)).
    """
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    return (rows[:, None] - rows[None, :]).abs() * window + (cols[:, None] - cols[None, :]).abs()


class Attention(nn.Module):
    """Multi-head self-attention inside one window, pre-normed, with a learned bias per offset and head."""

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.register_buffer("bias_index", get_offset_index(window), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens of B windows -> (B, N, C)."""
        batch, tokens, dim = x.shape
        # qkv holds [q, k, v] per head: (B, N, heads, 3 * head_dim) -> 3 x (B, heads, N, head_dim)
        qkv = self.qkv(self.norm(x)).view(batch, tokens, self.num_heads, -1).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)
        # a 4-D mask: with a 3-D one torch (2.14) takes its unfused CPU kernel, 7x slower here
        bias = self.attention_biases[None, :, self.bias_index].to(q.dtype)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    gelu_pairs = (("fc1", "act"),)

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.act = nn.Linear(dim, hidden), nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention (+ input), a depthwise convolution, then the MLP (+ its input)."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float, local_conv_size: int):
        super().__init__()
        self.window = window
        self.attn = Attention(dim, num_heads, window)
        self.mlp = Mlp(dim, round(dim * mlp_ratio))
        self.local_conv = ConvNorm(dim, dim, local_conv_size, 1, local_conv_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.get_windowed_attention(x)
        x = _conv(self.local_conv, x)
        return x + self.mlp(x)

    def get_windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention within w x w windows of (B, H, W, C) `x`, zero-padded bottom / right to whole windows.

        The padding tokens take part in attention unmasked, as in TinyViT (its weights were trained so).
        """
        batch, height, width, dim = x.shape
        w = self.window
        pad_h, pad_w = -height % w, -width % w
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        rows, cols = (height + pad_h) // w, (width + pad_w) // w
        windows = x.reshape(batch, rows, w, cols, w, dim).transpose(2, 3).reshape(-1, w * w, dim)
        x = self.attn(windows).view(batch, rows, cols, w, w, dim).transpose(2, 3)
        return x.reshape(batch, rows * w, cols * w, dim)[:, :height, :width]


class ConvLayer(nn.Module):
    """The first stage: MBConv blocks, then patch merging."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: nn.Module):
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class BasicLayer(nn.Module):
    """An attention stage: TinyViT blocks, then patch merging (none after the last stage)."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, config: TinyVitConfig, downsample):
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, num_heads, window, config.mlp_ratio, config.local_conv_size)
                                    for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel (SAM's neck), on (B, H, W, C) arrays."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)


class Neck(nn.Sequential):
    """SAM's neck: 1x1 convolution to out_chans, channel LayerNorm, 3x3 convolution, channel LayerNorm."""

    def __init__(self, dim: int, out_chans: int):
        super().__init__(nn.Conv2d(dim, out_chans, 1, bias=False), LayerNorm2d(out_chans),
                         nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False), LayerNorm2d(out_chans))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, out_chans, H, W)."""
        x = self[1](_conv(self[0], x))
        return self[3](_conv(self[2], x)).permute(0, 3, 1, 2).contiguous()


class TinyViT(nn.Module):
    """The encoder: (B, 3, S, S) images, as the model's input transform prepares them -> (B, 256, G, G)."""

    def __init__(self, config: TinyVitConfig):
        super().__init__()
        self.config = config
        self.img_size = config.image_size
        dims = config.embed_dims
        last = len(dims) - 1
        self.patch_embed = PatchEmbed(config)
        merges = [PatchMerging(dims[i], dims[i + 1], 1 if i + 1 == last else 2) for i in range(last)]
        self.layers = nn.ModuleList([ConvLayer(dims[0], config.depths[0], config.mbconv_expand_ratio, merges[0])])
        self.layers.extend(BasicLayer(dims[i], config.depths[i], config.num_heads[i - 1], config.window_sizes[i - 1],
                                      config, merges[i] if i < last else None) for i in range(1, last + 1))
        self.neck = Neck(dims[-1], config.out_chans)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Computes in the dtype of the encoder's weights; the embedding is always float32."""
        x = self.patch_embed(images.to(self.neck[0].weight.dtype))
        for layer in self.layers:
            x = layer(x)
        return self.neck(x).float()


def build_tinyvit(config: TinyVitConfig) -> TinyViT:
    """A TinyViT encoder for `config` with fresh weights, in eval mode."""
    return TinyViT(config).eval()


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent), child, module)


def _get_fused(layer: nn.Module) -> nn.Module:
    """`layer` (a ConvNorm or a Linear) and the GELU after it as one module."""
    if isinstance(layer, ConvNorm):
        return layer.get_folded(ConvGelu)
    fused = LinearGelu(layer.in_features, layer.out_features, device=layer.weight.device, dtype=layer.weight.dtype)
    fused.load_state_dict(layer.state_dict())
    return fused


@torch.no_grad()
def get_inference_encoder(encoder: TinyViT, dtype: Optional[torch.dtype] = None) -> TinyViT:
    """A copy of `encoder` for inference, in `dtype` (default: the encoder's): every convolution +
    BatchNorm folded into one convolution, and each GELU computed by the layer before it (`ConvGelu`).

    The folding is done in float64 and rounded once to `dtype`, so in float32 the copy equals
    `encoder` in eval mode up to float rounding; `encoder` (trainable, with its BatchNorms) is left
    as it was. The copy cannot be trained: it has no BatchNorm left to update. bfloat16 pays where
    the CPU multiplies bf16 natively (AMX, `medicosam.device.has_fast_cpu_bf16`).
    """
    dtype = dtype or encoder.neck[0].weight.dtype
    fast = copy.deepcopy(encoder).eval().requires_grad_(False).double()
    for module in list(fast.modules()):
        for layer, activation in getattr(module, "gelu_pairs", ()):
            _replace(module, layer, _get_fused(module.get_submodule(layer)))
            _replace(module, activation, nn.Identity())
    for name, module in list(fast.named_modules()):
        if isinstance(module, ConvNorm):
            _replace(fast, name, module.get_folded())
    return fast.to(dtype)


#: encoder -> (the state of its weights a copy was made from, that copy): `get_current_inference_encoder`
_INFERENCE_COPIES: weakref.WeakKeyDictionary[TinyViT, Tuple[tuple, TinyViT]] = weakref.WeakKeyDictionary()


def _get_weights_state(encoder: TinyViT) -> Optional[tuple]:
    """What changes whenever a weight or BatchNorm statistic of `encoder` changes: each tensor's storage,
    dtype, device and in-place version counter (optimizer steps, BatchNorm updates and `load_state_dict`
    bump it; `.to()` gives new storage). None where torch keeps no counter (tensors made in inference mode)."""
    tensors = [*encoder.parameters(), *encoder.buffers()]
    if any(tensor.is_inference() for tensor in tensors):
        return None
    return tuple((tensor.data_ptr(), tensor.dtype, tensor.device, tensor._version) for tensor in tensors)


def get_current_inference_encoder(encoder: TinyViT) -> TinyViT:
    """`get_inference_encoder(encoder)` in its own dtype, made once per state of its weights.

    The predictor's fast path calls this per encoder call: the copy is kept (as long as `encoder` lives)
    until training or loading changes a weight in place, and then made again, so it never computes with
    stale weights; `encoder` itself is left as it is.
    """
    state = _get_weights_state(encoder)
    found = _INFERENCE_COPIES.get(encoder)
    if state is None or found is None or found[0] != state:
        found = (state, get_inference_encoder(encoder))
        if state is not None:
            _INFERENCE_COPIES[encoder] = found
    return found[1]


_PREFIX = "image_encoder."


def _get_shape(state: Mapping[str, torch.Tensor], key: str, ndim: int) -> Tuple[int, ...]:
    value = state.get(_PREFIX + key)
    if not isinstance(value, torch.Tensor) or value.ndim != ndim:
        raise ModelError(f"not a TinyViT image encoder: {_PREFIX + key} is missing or not {ndim}-D")
    return tuple(value.shape)


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    """How many consecutive indices i from 0 have a key matching `pattern` with {} = i."""
    found = {int(match.group(1)) for key in state
             if (match := re.fullmatch(_PREFIX + pattern.format(r"(\d+)") + r"\..*", key))}
    count = 0
    while count in found:
        count += 1
    return count


def get_tinyvit_config(state: Mapping[str, torch.Tensor]) -> TinyVitConfig:
    """The `TinyVitConfig` of the `image_encoder.*` tensors of a SAM state dict, read from their shapes.

    Raises ModelError when they are not a TinyViT encoder, when a size is out of bounds, or when
    any key or shape differs from what that configuration builds (so loading with strict=True works).
    """
    half, in_chans, kernel, _ = _get_shape(state, "patch_embed.seq.0.c.weight", 4)
    stages = _count(state, r"layers\.{}")
    if not 2 <= stages <= CONFIG_LIMITS["stages"]:
        raise ModelError(f"not a TinyViT image encoder: {stages} stages (allowed: 2 to {CONFIG_LIMITS['stages']})")
    dims = [2 * half] + [_get_shape(state, f"layers.{i}.downsample.conv1.c.weight", 4)[0] for i in range(stages - 1)]
    depths = [_count(state, rf"layers\.{i}\.blocks\.{{}}") for i in range(stages)]
    hidden = _get_shape(state, "layers.0.blocks.0.conv1.c.weight", 4)[0]
    heads, windows = [], []
    for i in range(1, stages):
        count, table = _get_shape(state, f"layers.{i}.blocks.0.attn.attention_biases", 2)
        heads.append(count)
        windows.append(math.isqrt(table) if math.isqrt(table) ** 2 == table else 0)
    stride = PATCH_KERNELS.get(kernel, (1,))[0] ** 2
    config = TinyVitConfig(
        image_size=SAM_GRID * stride * 2 ** (stages - 2),
        patch_kernel=kernel, in_chans=in_chans, embed_dims=tuple(dims), depths=tuple(depths),
        num_heads=tuple(heads), window_sizes=tuple(windows),
        mlp_ratio=_get_shape(state, "layers.1.blocks.0.mlp.fc1.weight", 2)[0] / max(dims[1], 1),
        mbconv_expand_ratio=hidden / max(dims[0], 1),
        local_conv_size=_get_shape(state, "layers.1.blocks.0.local_conv.c.weight", 4)[-1],
        out_chans=_get_shape(state, "neck.0.weight", 4)[0],
    )
    _check_layout(state, config)
    return config


def _check_layout(state: Mapping[str, torch.Tensor], config: TinyVitConfig) -> None:
    """ModelError unless the `image_encoder.*` keys and shapes are exactly those `config` builds."""
    with torch.device("meta"):
        expected = {_PREFIX + key: tuple(value.shape) for key, value in TinyViT(config).state_dict().items()}
    found = {key: tuple(value.shape) for key, value in state.items() if key.startswith(_PREFIX)}
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    wrong = sorted(key for key in expected.keys() & found.keys() if expected[key] != found[key])
    if missing or unexpected or wrong:
        details = [f"{len(keys)} {what} (first: {keys[0]})" for what, keys in
                   (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", wrong)) if keys]
        raise ModelError("TinyViT image encoder tensors do not match its sizes: " + "; ".join(details))
