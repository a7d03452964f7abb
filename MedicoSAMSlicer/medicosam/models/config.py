"""SAM architecture descriptions and the one place real `segment_anything` models are built.

A `SamConfig` names every size that varies between SAM variants. The official ViT-b/l/h
configurations are the ones users get; tests and the demo use tiny ones (e.g. 256 px, 64-dim,
depth 2) built from the very same `segment_anything` classes, so every code path is the real one.
"""

from __future__ import annotations

import dataclasses
import re
from functools import partial
from typing import Dict, Mapping, Tuple

from ..errors import ModelError
from ..preprocessing import PIXEL_MEAN, PIXEL_STD

#: The largest value each `SamConfig` field may take: far above every published SAM (ViT-H is 1280
#: wide, 32 deep, 1024 px), and low enough that the sizes read from a corrupt or hostile checkpoint
#: cannot make the builder ask for terabytes.
CONFIG_LIMITS: Dict[str, float] = {
    "encoder_embed_dim": 4096, "encoder_depth": 128, "encoder_num_heads": 128, "image_size": 4096,
    "patch_size": 64, "window_size": 256, "mlp_ratio": 16, "prompt_embed_dim": 4096, "mask_in_chans": 1024,
    "decoder_depth": 32, "decoder_mlp_dim": 16384, "decoder_num_heads": 128, "num_multimask_outputs": 16,
    "iou_head_depth": 16, "iou_head_hidden_dim": 4096,
}


@dataclasses.dataclass(frozen=True)
class SamConfig:
    """Every architectural number of a SAM model (defaults: the official ViT-b)."""

    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: Tuple[int, ...] = (2, 5, 8, 11)
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256

    def __post_init__(self) -> None:
        problems = [f"{name}={getattr(self, name)} (allowed: 1 to {limit})"
                    for name, limit in CONFIG_LIMITS.items() if not 1 <= getattr(self, name) <= limit]
        if problems:
            raise ModelError("SAM sizes out of range: " + "; ".join(problems))

    @property
    def arch(self) -> str:
        """`vit_b`, `vit_l`, `vit_h` for the official architectures, else `custom`."""
        for name, config in OFFICIAL_CONFIGS.items():
            if self == config:
                return name
        return "custom"

    @property
    def embedding_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        """Side of the low-res mask logits (256 for official SAM)."""
        return 4 * self.embedding_size


OFFICIAL_CONFIGS: Dict[str, SamConfig] = {
    "vit_b": SamConfig(),
    "vit_l": SamConfig(encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16,
                       encoder_global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": SamConfig(encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16,
                       encoder_global_attn_indexes=(7, 15, 23, 31)),
}


def get_tiny_config(image_size: int = 256, embed_dim: int = 64, depth: int = 2) -> SamConfig:
    """A SAM small enough to train on two CPU cores in a minute (tests, demo)."""
    return SamConfig(
        encoder_embed_dim=embed_dim, encoder_depth=depth, encoder_num_heads=4,
        encoder_global_attn_indexes=(depth - 1,), image_size=image_size, window_size=8,
        prompt_embed_dim=64, decoder_mlp_dim=256, iou_head_hidden_dim=64,
    )


def build_sam(config: SamConfig):
    """Build a real `segment_anything.modeling.Sam` for `config` (random weights, eval mode)."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, Sam

    c = config
    image_encoder = ImageEncoderViT(  # built first: seeded models keep the weights they always had
        depth=c.encoder_depth, embed_dim=c.encoder_embed_dim, img_size=c.image_size,
        mlp_ratio=c.mlp_ratio, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=c.encoder_num_heads, patch_size=c.patch_size, qkv_bias=True, use_rel_pos=True,
        global_attn_indexes=c.encoder_global_attn_indexes, window_size=c.window_size,
        out_chans=c.prompt_embed_dim,
    )
    prompt_encoder, mask_decoder = build_prompt_encoder_and_decoder(config)
    sam = Sam(
        image_encoder=image_encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    return sam.eval()


def build_prompt_encoder_and_decoder(config: SamConfig):
    """`segment_anything`'s prompt encoder and mask decoder of `config` (every SAM-decoder family shares them)."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    c = config
    grid = c.embedding_size
    prompt_encoder = PromptEncoder(
        embed_dim=c.prompt_embed_dim, image_embedding_size=(grid, grid),
        input_image_size=(c.image_size, c.image_size), mask_in_chans=c.mask_in_chans,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=c.num_multimask_outputs,
        transformer=TwoWayTransformer(depth=c.decoder_depth, embedding_dim=c.prompt_embed_dim,
                                      mlp_dim=c.decoder_mlp_dim, num_heads=c.decoder_num_heads),
        transformer_dim=c.prompt_embed_dim, iou_head_depth=c.iou_head_depth,
        iou_head_hidden_dim=c.iou_head_hidden_dim,
    )
    return prompt_encoder, mask_decoder


def _count_indexed(state: Mapping, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({int(m.group(1)) for key in state if (m := pattern.match(key))})


def detect_config(state: Mapping) -> SamConfig:
    """Read the architecture from the tensor shapes of a plain SAM state dict.

    The mask decoder's head count leaves no trace in the shapes: SAM (and our tiny models)
    always use 8. Raises KeyError when a key every SAM has is missing, ModelError when the
    sizes are out of `CONFIG_LIMITS`.
    """
    patch = state["image_encoder.patch_embed.proj.weight"]
    embed_dim, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    grid = int(state["image_encoder.pos_embed"].shape[1])
    depth = _count_indexed(state, "image_encoder.blocks.")
    head_dim = int(state["image_encoder.blocks.0.attn.rel_pos_h"].shape[1])
    if min(embed_dim, head_dim) < 1:  # the divisions below; SamConfig checks every other size
        raise ModelError(f"SAM sizes out of range: encoder width {embed_dim}, attention head width {head_dim}")
    rel_sizes = [int(state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0]) for i in range(depth)]
    global_indexes = tuple(i for i, n in enumerate(rel_sizes) if n == 2 * grid - 1)
    windowed = [n for n in rel_sizes if n != 2 * grid - 1]
    window_size = (windowed[0] + 1) // 2 if windowed else 14
    return SamConfig(
        encoder_embed_dim=embed_dim,
        encoder_depth=depth,
        encoder_num_heads=embed_dim // head_dim,
        encoder_global_attn_indexes=global_indexes,
        image_size=grid * patch_size,
        patch_size=patch_size,
        window_size=window_size,
        mlp_ratio=int(state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0]) / embed_dim,
        prompt_embed_dim=int(state["image_encoder.neck.0.weight"].shape[0]),
        mask_in_chans=4 * int(state["prompt_encoder.mask_downscaling.0.weight"].shape[0]),
        decoder_depth=_count_indexed(state, "mask_decoder.transformer.layers."),
        decoder_mlp_dim=int(state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
        num_multimask_outputs=int(state["mask_decoder.mask_tokens.weight"].shape[0]) - 1,
        iou_head_depth=_count_indexed(state, "mask_decoder.iou_prediction_head.layers."),
        iou_head_hidden_dim=int(state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]),
    )
