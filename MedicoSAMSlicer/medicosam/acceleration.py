"""A fast, reversible inference path for a real `segment_anything` Sam, with the same weights.

The official encoder materialises every attention map (12 x 4096 x 4096 per image in each global
block of ViT-b) and adds the decomposed relative-position bias to it. Here attention runs through
`torch.nn.functional.scaled_dot_product_attention` (fused / memory-efficient kernels) with that
bias passed as the additive mask, the image encoder runs under bf16 autocast on CUDA, and the
encoder can be compiled with `torch.compile`. Switching is done by changing the class of each
attention module to a subclass that only overrides `forward`: parameters, buffers and state-dict
keys never change, so an accelerated model still exports as a plain SAM checkpoint, and
`disable_fast_path` restores the official classes (fp32 official attention stays the reference).

This module imports torch and segment_anything at import time: import it only where they are needed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention as EncoderAttention
from segment_anything.modeling.image_encoder import get_rel_pos
from segment_anything.modeling.transformer import Attention as DecoderAttention

from .errors import MedicoSAMError

AUTOCAST_CHOICES = ("auto", "bfloat16", "float16", "none")


class AccelerationError(MedicoSAMError, ValueError):
    """An acceleration option that cannot be used (unknown dtype, compile unavailable...)."""


@dataclasses.dataclass(frozen=True)
class AccelerationConfig:
    """What the fast path turns on (defaults: SDPA everywhere, bf16 where it is fast, no compile).

    `autocast="auto"` means bf16 autocast on CUDA (fp16 where the GPU lacks bf16) and on CPUs
    with AMX tiles (Sapphire Rapids and later: ~1.7x on the ViT-b encoder), fp32 elsewhere (bf16
    is emulated, hence slower, on other CPUs). `compile` costs tens of seconds on first use per
    input shape; worth it for batch work (volume embedding, training), not for one click.
    """

    sdpa: bool = True
    autocast: str = "auto"
    compile: bool = False
    compile_mode: Optional[str] = None  # torch.compile mode, e.g. "max-autotune"

    def __post_init__(self) -> None:
        if self.autocast not in AUTOCAST_CHOICES:
            raise AccelerationError(f"unknown autocast {self.autocast!r}: use one of {AUTOCAST_CHOICES}")


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


_FAST_CLASSES = {EncoderAttention: FastEncoderAttention, DecoderAttention: FastDecoderAttention}
_OFFICIAL_CLASSES = {fast: official for official, fast in _FAST_CLASSES.items()}


def _swap_classes(model: torch.nn.Module, mapping: dict) -> None:
    for module in model.modules():
        new_class = mapping.get(type(module))
        if new_class is not None:
            module.__class__ = new_class


def enable_fast_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Route every SAM attention module of `model` (a Sam or any part of it) through SDPA, in place.

    Idempotent; the state dict (keys, tensors) is untouched.
    """
    _swap_classes(model, _FAST_CLASSES)
    return model


def disable_fast_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Give every attention module of `model` back its official `segment_anything` class, in place."""
    _swap_classes(model, _OFFICIAL_CLASSES)
    return model


def is_fast_attention(model: torch.nn.Module) -> bool:
    """True when at least one attention module of `model` runs the SDPA path."""
    return any(type(module) in _OFFICIAL_CLASSES for module in model.modules())


@contextlib.contextmanager
def fast_attention(model: torch.nn.Module, enabled: bool = True) -> Iterator[torch.nn.Module]:
    """SDPA attention for the duration of the block (training), then `model` as it was found.

    Exact in fp32; on GPUs the fused kernels never hold the 4096 x 4096 attention maps of the
    global blocks for the backward pass, which is most of the naive step's memory. Run the
    backward pass inside the block too: activation checkpointing recomputes the forward there.
    """
    switched = enabled and not is_fast_attention(model)
    if switched:
        enable_fast_attention(model)
    try:
        yield model
    finally:
        if switched:
            disable_fast_attention(model)


def compile_encoder(sam, mode: Optional[str] = None):
    """Compile `sam.image_encoder` in place with `torch.compile`, once per module.

    `nn.Module.compile` keeps the module (no `_orig_mod.` wrapper), so state-dict keys stay
    SAM's; later calls reuse the compiled code (recompiling only for new input shapes).
    """
    encoder = sam.image_encoder
    if not hasattr(encoder, "compile"):
        raise AccelerationError(f"torch {torch.__version__} has no nn.Module.compile: "
                                "upgrade torch to >= 2.2 or use AccelerationConfig(compile=False)")
    if not is_compiled(sam):
        encoder.compile(mode=mode)
    return sam


def is_compiled(sam) -> bool:
    """True when `sam.image_encoder` runs through `torch.compile` (see `compile_encoder`)."""
    return getattr(sam.image_encoder, "_compiled_call_impl", None) is not None


def enable_fast_path(sam, config: Optional[AccelerationConfig] = None):
    """Apply `config` (default `AccelerationConfig()`) to `sam` in place and return it.

    Autocast is not a model property: wrap calls in `get_autocast(device, config.autocast)`.
    """
    config = config or AccelerationConfig()
    if config.sdpa:
        enable_fast_attention(sam)
    if config.compile:
        compile_encoder(sam, config.compile_mode)
    return sam


def disable_fast_path(sam):
    """Undo `enable_fast_path`: official attention classes, no compiled encoder."""
    disable_fast_attention(sam)
    if is_compiled(sam):
        sam.image_encoder._compiled_call_impl = None  # what nn.Module.compile sets; None = eager
    return sam


def get_dtype(dtype: Union[str, torch.dtype, None]) -> Optional[torch.dtype]:
    """A torch floating dtype from a name ("bfloat16", "float16", "float32") or a dtype; None stays None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise AccelerationError(f"unknown floating dtype {dtype!r}: use 'bfloat16', 'float16' or 'float32'")
    return value


def has_fast_cpu_bf16() -> bool:
    """True on CPUs with AMX tiles, where oneDNN runs bf16 matrix products natively."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)  # torch >= 2.3; absent: assume no
    return bool(check is not None and check())


def get_autocast_dtype(device, autocast: str = "auto") -> Optional[torch.dtype]:
    """The dtype `get_autocast` uses on `device`, or None for plain fp32."""
    device = torch.device(device)
    if autocast == "none":
        return None
    if autocast == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and has_fast_cpu_bf16() else None
    if autocast not in AUTOCAST_CHOICES:
        raise AccelerationError(f"unknown autocast {autocast!r}: use one of {AUTOCAST_CHOICES}")
    return get_dtype(autocast)


def get_autocast(device, autocast: str = "auto"):
    """A context manager running the encoder in reduced precision on `device` (a no-op for fp32)."""
    dtype = get_autocast_dtype(device, autocast)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
