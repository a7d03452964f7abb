"""SAM2 / SAM2.1 models: which architecture a state dict holds, and building it from `sam2`'s configs.

Meta's files (and MedSAM2's) are `{"model": state_dict}`. The architecture is read from the state
dict: the Hiera trunk's width and depth name the official config (tiny / small / base+ / large),
the memory-attention depth is counted. What a state dict cannot tell (the input size: MedSAM2
runs at 512 px) comes from the registry entry, or from the `medicosam` record `export_sam2` writes
beside the weights (tiny test models). That record is untrusted like the rest of the file: only the
numeric sizes in `SIZE_KEYS` may be set, never a class to instantiate. Models are always built as
`sam2`'s `SAM2VideoPredictor` (a `SAM2Base`), which its image predictor also runs, with the
post-processing overrides `sam2.build_sam` applies.

Needs the `[sam2]` extra (`sam2==1.1.0`, Python >= 3.10); without it `ModelError` says what to install.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from .errors import ModelError

#: `sam2`'s config files of the official SAM2.1 models, by (trunk width, trunk blocks).
OFFICIAL_SAM2 = {
    (96, 12): "configs/sam2.1/sam2.1_hiera_t.yaml",
    (96, 16): "configs/sam2.1/sam2.1_hiera_s.yaml",
    (112, 24): "configs/sam2.1/sam2.1_hiera_b+.yaml",
    (144, 48): "configs/sam2.1/sam2.1_hiera_l.yaml",
}
#: What `sam2.build_sam.build_sam2_video_predictor` adds to every config (its `apply_postprocessing`).
_POSTPROCESSING = {
    "sam_mask_decoder_extra_args.dynamic_multimask_via_stability": True,
    "sam_mask_decoder_extra_args.dynamic_multimask_stability_delta": 0.05,
    "sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh": 0.98,
    "binarize_mask_from_pts_for_mem_enc": True,
    "fill_hole_area": 8,
}
#: The sizes a file's `medicosam` record or a registry entry may set, with their largest value.
SIZE_KEYS = {
    "image_size": 4096, "num_maskmem": 64,
    "image_encoder.trunk.embed_dim": 4096, "image_encoder.trunk.num_heads": 128,
    "image_encoder.trunk.stages": 128, "image_encoder.trunk.global_att_blocks": 512,
    "image_encoder.neck.backbone_channel_list": 16384,
    "memory_attention.num_layers": 64, "memory_attention.layer.dim_feedforward": 16384,
}
#: The sizes that are lists, with their most entries (Hiera has four stages; every other size is one number).
SIZE_LISTS = {"image_encoder.trunk.stages": 4, "image_encoder.trunk.global_att_blocks": 64,
              "image_encoder.neck.backbone_channel_list": 4}
#: Keys only SAM2 files have (SAM has `mask_decoder.`, `image_encoder.blocks.`).
SAM2_MARKERS = ("image_encoder.trunk.", "sam_mask_decoder.", "memory_attention.")
#: The key of the build record `export_sam2` writes beside `model`.
RECORD_KEY = "medicosam"
INSTALL_HINT = ("SAM2 models need the sam2 package: pip install 'medicosam[sam2]' (or SAM2_BUILD_CUDA=0 "
                "pip install sam2==1.1.0; Python >= 3.10, so Slicer 5.10 or later)")


@dataclasses.dataclass(frozen=True)
class Sam2Config:
    """A SAM2 architecture: one of `sam2`'s config files and the sizes changed from it."""

    config_file: str
    sizes: Tuple[Tuple[str, Any], ...] = ()

    @property
    def image_size(self) -> int:
        return int(dict(self.sizes).get("image_size", 1024))

    @property
    def name(self) -> str:
        """e.g. `sam2.1_hiera_t` or `sam2.1_hiera_t (image_size=512)`."""
        base = Path(self.config_file).stem
        return f"{base} ({', '.join(f'{k}={v}' for k, v in self.sizes)})" if self.sizes else base

    @property
    def arch(self) -> str:
        """What listings and the server's /v1/models call it (as `SamConfig.arch`)."""
        return self.name

    def get_overrides(self) -> list:
        """Hydra overrides: the video predictor class, sam2's post-processing, these sizes and the
        memory attention's RoPE grid, which follows the input size (1/16 of it)."""
        sizes = {**_POSTPROCESSING, **dict(self.sizes)}
        grid = self.image_size // 16
        for part in ("self_attention", "cross_attention"):
            sizes[f"memory_attention.layer.{part}.feat_sizes"] = [grid, grid]
        overrides = ["++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor"]
        return overrides + [f"++model.{key}={_format(value)}" for key, value in sizes.items()]


def is_sam2_state(state: Mapping[str, Any]) -> bool:
    """True for SAM2 weights (plain or under `model`), which `load_sam` hands to `load_sam2`."""
    state = state.get("model", state) if isinstance(state.get("model"), Mapping) else state
    return any(str(key).startswith(SAM2_MARKERS) for key in state)


def get_sizes(record: Any, source: str) -> Tuple[Tuple[str, Any], ...]:
    """Checked sizes from a registry entry or a file's record: known keys, whole numbers in range."""
    if record is None:
        return ()
    if not isinstance(record, Mapping):
        raise ModelError(f"{source}: its {RECORD_KEY!r} entry is a {type(record).__name__}, not a dict of sizes")
    checked = []
    for key, value in record.items():
        is_list = isinstance(value, (list, tuple))
        values = value if is_list else [value]
        limit = SIZE_KEYS.get(key)
        if limit is None or is_list != (key in SIZE_LISTS) or not 0 < len(values) <= SIZE_LISTS.get(key, 1) or \
                not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= limit for v in values):
            raise ModelError(f"{source}: SAM2 size {key}={value!r} is not allowed (known sizes: "
                             f"{', '.join(SIZE_KEYS)}; whole numbers up to their limit, lists only for "
                             f"{', '.join(f'{k} (at most {n})' for k, n in SIZE_LISTS.items())})")
        checked.append((key, list(values) if isinstance(value, (list, tuple)) else value))
    return tuple(sorted(checked))


def detect_sam2_config(state: Mapping[str, Any], sizes: Tuple[Tuple[str, Any], ...] = (),
                       source: str = "checkpoint") -> Sam2Config:
    """The config of a SAM2 state dict; `sizes` (entry or file record) first, then the official match."""
    given = dict(sizes)
    try:
        width = int(state["image_encoder.trunk.patch_embed.proj.weight"].shape[0])
    except KeyError:
        raise ModelError(f"{source} is not a complete SAM2 state dict: it lacks "
                         "image_encoder.trunk.patch_embed.proj.weight, which every SAM2 has") from None
    blocks = 1 + max(int(m.group(1)) for key in state
                     for m in [re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", key)] if m)
    layers = 1 + max((int(m.group(1)) for key in state
                      for m in [re.match(r"memory_attention\.layers\.(\d+)\.", key)] if m), default=-1)
    if "image_encoder.trunk.embed_dim" in given:
        config_file = OFFICIAL_SAM2[(96, 12)]  # a reduced model: its sizes are all in the record
    elif (width, blocks) in OFFICIAL_SAM2:
        config_file = OFFICIAL_SAM2[(width, blocks)]
    else:
        raise ModelError(f"{source}: a SAM2 Hiera trunk {width} wide with {blocks} blocks is none of the "
                         "official SAM2.1 sizes (tiny 96/12, small 96/16, base+ 112/24, large 144/48)")
    if layers != 4 and "memory_attention.num_layers" not in given:
        given["memory_attention.num_layers"] = layers  # MedSAM2: 2
    if "no_obj_embed_spatial" not in state:
        raise ModelError(f"{source} holds SAM2 (2024-07) weights, not SAM2.1: use the SAM2.1 release "
                         "(sam2.1_hiera_*.pt)")
    return Sam2Config(config_file, get_sizes(given, source))


def build_sam2_model(config: Sam2Config, device: str = "cpu", state: Optional[Mapping[str, Any]] = None,
                     source: str = "checkpoint"):
    """A `sam2` SAM2VideoPredictor of `config` in eval mode on `device`: random weights, or `state`'s.

    With `state` (a file's weights, untrusted like its size record) the model the sizes describe is first
    built on the meta device, which allocates nothing: it must hold exactly the state's tensors and fit
    the device's memory, or ModelError says why before a byte is allocated (a record may declare a model
    far larger than its weights: embed_dim 4096 and 64 blocks a stage once took 8.8 GB, then failed).
    """
    from .models.checkpoint import _check_memory

    if state is not None:
        expected = _instantiate(config, "meta").state_dict()
        _check_state(expected, state, source)
        _check_memory(expected, device, source=source)
    model = _instantiate(config, "cpu").to(device).eval()
    if state is not None:
        model.load_state_dict(state)
    return model


def _instantiate(config: Sam2Config, device: str):
    """`config`'s model built by hydra from `sam2`'s config files; on "meta", parameters without storage."""
    import torch

    compose, instantiate, omegaconf = _import_hydra()
    try:
        cfg = compose(config_name=config.config_file, overrides=config.get_overrides())
        omegaconf.OmegaConf.resolve(cfg)
        with torch.device(device), _linspace_on_cpu():
            return instantiate(cfg.model, _recursive_=True)
    except Exception as e:  # hydra / sam2 raise many kinds for sizes that do not fit together
        raise ModelError(f"cannot build SAM2 {config.name}: {type(e).__name__}: {e}") from e


def _linspace_on_cpu():
    """A torch function mode that makes `torch.linspace` on the CPU: Hiera reads its drop-path rates from
    one with `.item()`, which a meta tensor cannot answer (everything else may stay on the meta device)."""
    import torch
    from torch.overrides import TorchFunctionMode

    class CpuLinspace(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            if func is torch.linspace:
                kwargs["device"] = "cpu"
            return func(*args, **kwargs)

    return CpuLinspace()


def _check_state(expected: Mapping[str, Any], state: Mapping[str, Any], source: str) -> None:
    """Say exactly how `state` differs from the tensors `expected` (no wall of key lists)."""
    from .models.checkpoint import _summarize_keys

    problems = []
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [f"{key} {tuple(state[key].shape)} (expected {tuple(value.shape)})"
                  for key, value in expected.items() if key in state and tuple(state[key].shape) != tuple(value.shape)]
    if missing:
        problems.append(f"{len(missing)} missing keys: {_summarize_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_summarize_keys(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} tensors of unexpected shape: {', '.join(mismatched[:4])}")
    if problems:
        raise ModelError(f"{source} cannot be loaded as a SAM2 model:\n  - " + "\n  - ".join(problems))


def get_sam2_state(obj: Mapping[str, Any], source: str) -> Tuple[Dict[str, Any], Any]:
    """(SAM2 state dict, the file's `medicosam` size record or None) from Meta's layout or a plain dict."""
    from .models.checkpoint import _strip_wrapper_prefixes

    state = obj["model"] if isinstance(obj.get("model"), Mapping) else obj
    state = _strip_wrapper_prefixes({key: value for key, value in state.items() if key != RECORD_KEY})
    if not any(key.startswith(SAM2_MARKERS) for key in state):
        raise ModelError(f"{source} holds no SAM2 weights (no image_encoder.trunk.* / sam_mask_decoder.* keys)")
    return state, obj.get(RECORD_KEY)


def export_sam2(model, config: Sam2Config, path: Union[str, Path]) -> Path:
    """Write Meta's layout `{"model": state}`, plus the sizes `config` changes (`RECORD_KEY`), atomically."""
    from .models.checkpoint import _get_compact_tensor, save_atomically

    state = {key: _get_compact_tensor(value) for key, value in model.state_dict().items()}
    obj: Dict[str, Any] = {"model": state}
    if config.sizes:
        obj[RECORD_KEY] = {key: value for key, value in config.sizes}
    return save_atomically(obj, path)


def get_reduced_config(image_size: int = 256) -> Sam2Config:
    """A SAM2.1 small enough for CPU tests (~8 M parameters): real classes, fewer and narrower blocks."""
    return Sam2Config(OFFICIAL_SAM2[(96, 12)], get_sizes({
        "image_size": image_size, "image_encoder.trunk.embed_dim": 32, "image_encoder.trunk.stages": [1, 1, 2, 1],
        "image_encoder.trunk.global_att_blocks": [3], "image_encoder.neck.backbone_channel_list": [256, 128, 64, 32],
        "memory_attention.num_layers": 1, "memory_attention.layer.dim_feedforward": 256,
    }, "get_reduced_config"))


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format(v) for v in value) + "]"
    return str(value)


def _import_hydra():
    try:
        import omegaconf
        import sam2  # noqa: F401  (initialises hydra on sam2's config module)
        from hydra import compose
        from hydra.utils import instantiate
    except ImportError as e:
        raise ModelError(f"{INSTALL_HINT} ({e})") from None
    return compose, instantiate, omegaconf



def recognises(obj: Mapping[str, Any]) -> bool:
    """The SAM2 family's rule (`medicosam.models.families`): SAM2 weights, plain or in Meta's layout."""
    return is_sam2_state(obj)


def load(obj: Mapping[str, Any], *, checkpoint, path: Path, device: str, allow_custom: bool):
    """The `LoadedSam2` of a checkpoint's dict: sizes from the file's record or the registry entry, then the state.

    Sizes beyond an official config come only from a registry entry or from the record `export_sam2`
    writes (`WRITER_KEY`): MedicoSAM's own either way, so a SAM2 file needs no `allow_custom`."""
    from .models.checkpoint import LoadedSam2, get_loaded_id, prepare_state
    from .models.registry import find_model_spec

    state, record = get_sam2_state(obj, source=str(path))
    spec = find_model_spec(str(checkpoint)) if isinstance(checkpoint, str) else None
    sizes = get_sizes(record, str(path)) if record is not None else tuple(spec.sam2_sizes if spec else ())
    config = detect_sam2_config(state, sizes, source=str(path))
    prepare_state(state, None, device, source=str(path))
    model = build_sam2_model(config, device, state, source=str(path))  # checked on the meta device first
    return LoadedSam2(sam2=model, config=config, source=str(checkpoint), path=path, model_id=get_loaded_id(path))
