"""A fast inference path for a real `segment_anything` Sam, with the same weights, chosen per call.

The official encoder materialises every attention map (12 x 4096 x 4096 per image in each global
block of ViT-b) and adds the decomposed relative-position bias to it. Here attention runs through
`torch.nn.functional.scaled_dot_product_attention` (fused / memory-efficient kernels) with that
bias passed as the additive mask, and the image encoder runs under bf16 autocast where the device
runs bf16 natively. `fast_attention` switches a model for the duration of a block, by changing the
class of each attention module to a subclass that only overrides `forward` (parameters, buffers
and state-dict keys never change), and puts back what it found: several users of one model (a fast
and a reference predictor, training and evaluation) each get the path they asked for, and fp32
official attention stays the reference. Compiling the encoder (`compile_encoder`) is the one
switch that stays: it is chosen once, when the model is loaded, for batch work.

This module imports torch and segment_anything at import time: import it only where they are needed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.image_encoder import Attention as EncoderAttention
from segment_anything.modeling.image_encoder import get_rel_pos
from segment_anything.modeling.transformer import Attention as DecoderAttention

from .device import AUTOCAST_CHOICES, get_autocast_dtype
from .errors import InputError


@dataclasses.dataclass(frozen=True)
class AccelerationConfig:
    """What the fast path turns on per call (defaults: SDPA everywhere, bf16 where it is fast).

    `autocast="auto"` means bf16 autocast on CUDA (fp16 where the GPU lacks bf16) and on CPUs
    with AMX tiles (Sapphire Rapids and later: ~1.7x on the ViT-b encoder), fp32 elsewhere (bf16
    is emulated, hence slower, on other CPUs); see `medicosam.device.get_autocast_dtype`.
    """

    sdpa: bool = True
    autocast: str = "auto"

    def __post_init__(self) -> None:
        if self.autocast not in AUTOCAST_CHOICES:
            raise InputError(f"unknown autocast {self.autocast!r}: use one of {AUTOCAST_CHOICES}")


def get_rel_pos_bias(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                     size: Tuple[int, int]) -> torch.Tensor:
    """SAM's decomposed relative-position term as an additive attention mask (B, heads, HW, HW).

    Equal to what `segment_anything...add_decomposed_rel_pos` adds to the scaled scores: it uses
    the unscaled queries, so adding it to `q k^T * scale` inside SDPA gives the same logits.
    """
    h, w = size
    batch, heads, _, dim = q.shape
    r_q = q.reshape(batch, heads, h, w, dim)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, get_rel_pos(h, h, rel_pos_h).to(q.dtype))
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, get_rel_pos(w, w, rel_pos_w).to(q.dtype))
    return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(batch, heads, h * w, h * w)


class FastEncoderAttention(EncoderAttention):
    """The image encoder's attention (windowed or global) through SDPA; same parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(batch, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, HW, head_dim)
        bias = get_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w)) if self.use_rel_pos else None
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # default scale = self.scale
        return self.proj(x.transpose(1, 2).reshape(batch, h, w, -1))


class FastDecoderAttention(DecoderAttention):
    """The mask decoder's token / image cross-attention through SDPA; same parameters."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        v = self._separate_heads(self.v_proj(v), self.num_heads)
        return self.out_proj(self._recombine_heads(F.scaled_dot_product_attention(q, k, v)))


class FusedLayerNorm2d(LayerNorm2d):
    """SAM's channel LayerNorm as one `layer_norm` call on the channels-last view; same parameters.

    SAM spells it as six passes over the tensor (mean, subtract, square, mean, divide, scale), each
    kept for the backward pass: at LiteMedSAM's 256 x 256 mask resolution that was a third of a
    training step's decoder time on a CPU. Equal up to float rounding (autocast runs it in fp32). The
    output keeps the input's memory layout (a layout change would reach the next layer's weight
    gradients, which DDP then copies into its buckets).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps).permute(0, 3, 1, 2)
        return y if x.is_contiguous(memory_format=torch.channels_last) else y.contiguous()


_FAST_CLASSES = {EncoderAttention: FastEncoderAttention, DecoderAttention: FastDecoderAttention}
_OFFICIAL_CLASSES = {fast: official for official, fast in _FAST_CLASSES.items()}


def is_fast_attention(model: torch.nn.Module) -> bool:
    """True when at least one attention module of `model` runs the SDPA path."""
    return any(type(module) in _OFFICIAL_CLASSES for module in model.modules())


@contextlib.contextmanager
def fast_attention(model: torch.nn.Module, enabled: bool = True) -> Iterator[torch.nn.Module]:
    """SDPA attention (`enabled`) or the official one for the block, then `model` as it was found.

    `model` is a Sam or any part of it. Exact in fp32; on GPUs the fused kernels never hold the
    4096 x 4096 attention maps of the global blocks for the backward pass, which is most of the
    naive training step's memory. Run the backward pass inside the block too: activation
    checkpointing recomputes the forward there. One model is switched by one thread at a time
    (the effect runs every model call on one thread, `medicosam.effect.worker`).
    """
    with _switching(model, _FAST_CLASSES if enabled else _OFFICIAL_CLASSES):
        yield model


@contextlib.contextmanager
def fused_norms(model: torch.nn.Module, enabled: bool = True) -> Iterator[torch.nn.Module]:
    """`FusedLayerNorm2d` for SAM's channel LayerNorms (`enabled`, training's choice) or SAM's own for
    the block, then `model` as it was found (as `fast_attention`)."""
    with _switching(model, {LayerNorm2d: FusedLayerNorm2d} if enabled else {FusedLayerNorm2d: LayerNorm2d}):
        yield model


@contextlib.contextmanager
def _switching(model: torch.nn.Module, classes: dict) -> Iterator[None]:
    """Modules of a class in `classes` get the class it maps to for the block (parameters, buffers and
    state-dict keys never change), then the class they had."""
    found = [(module, type(module)) for module in model.modules() if type(module) in classes]
    for module, found_class in found:
        module.__class__ = classes[found_class]
    try:
        yield
    finally:
        for module, found_class in found:
            module.__class__ = found_class


def compile_encoder(sam, mode: Optional[str] = None):
    """Compile `sam.image_encoder` in place with `torch.compile`, once per module (at load time).

    `nn.Module.compile` keeps the module (no `_orig_mod.` wrapper), so state-dict keys stay
    SAM's; later calls reuse the compiled code, recompiling for new input shapes and for the other
    attention path. Tens of seconds per shape: worth it for batch work (volume embedding,
    benchmarks), not for one click.
    """
    encoder = sam.image_encoder
    if not hasattr(encoder, "compile"):
        raise InputError(f"torch {torch.__version__} has no nn.Module.compile: upgrade torch to >= 2.2 "
                         "or leave the encoder uncompiled")
    if not is_compiled(sam):
        encoder.compile(mode=mode)
    return sam


def is_compiled(sam) -> bool:
    """True when `sam.image_encoder` runs through `torch.compile` (see `compile_encoder`)."""
    return getattr(sam.image_encoder, "_compiled_call_impl", None) is not None


def get_dtype(dtype: Union[str, torch.dtype, None]) -> Optional[torch.dtype]:
    """A torch floating dtype from a name ("bfloat16", "float16", "float32") or a dtype; None stays None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise InputError(f"unknown floating dtype {dtype!r}: use 'bfloat16', 'float16' or 'float32'")
    return value


def get_autocast(device, autocast: str = "auto"):
    """A context manager running the encoder in reduced precision on `device` (a no-op for fp32)."""
    dtype = get_autocast_dtype(device, autocast)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
