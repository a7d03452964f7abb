"""Safe checkpoint loading, format unwrapping, compatibility errors, and export.

A checkpoint is untrusted input, and unpickling can run any code the file names. Files are read
with `torch.load(weights_only=True)`, which rebuilds tensors and plain containers only. torch-em /
micro-sam training checkpoints also pickle live objects (the model, datasets, augmentations in
`init`), which weights_only refuses; those are read again with `_InertPickleModule`, which turns
every such object into an inert placeholder, and only their weights are kept. Files from
micro-sam / torch-em training (`model_state`, `decoder_state`, `sam.` / `module.` prefixes) are
unwrapped to a plain SAM state dict; anything that is not plain SAM (adapters, other sizes) gets
an error that names the difference instead of a wall of `load_state_dict` key lists. Weights that
are not finite, or a model too big for the device, are refused before anything is built.

Two export layouts, two functions, so the choice is visible at the call site:
`export_sam` writes the model's plain state dict, its family's own layout (SAM: what
`segment_anything.sam_model_registry` loads; LiteMedSAM: what its reference builder loads; each family
module's `EXPORT_NOTE` says which tools load it); `export_sam_with_decoder` writes micro-sam's
`{"model_state", "decoder_state"}` for tools that also use the segmentation decoder (segment_anything
cannot load that file).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from medicosam.atomic import writing_atomically
from medicosam.errors import ModelError
from medicosam.models.config import OFFICIAL_CONFIGS, SamConfig, build_sam, detect_config
from medicosam.models.download import ProgressCallback, get_checked_file_id, resolve_checkpoint
from medicosam.models.families import FAMILIES, ModelFamily, detect_family

_SAM_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
#: Wrapper prefixes, outermost first: DDP, torch.compile, micro-sam's TrainableSAM.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "sam.")
_UNETR_PARTS = ("base.", "decoder.", "deconv1.", "deconv_out.", "decoder_head.", "out_conv.")
#: Where the weights are in the layouts that may also pickle Python objects (torch-em / micro-sam
#: training checkpoints, Lightning's `state_dict`): only these are kept from such a file.
_WEIGHT_KEYS = ("model_state", "decoder_state", "state_dict")
#: torch's legacy (non-zip) files start with their pickled magic number.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
#: Every checkpoint MedicoSAM writes is marked with this key: a top-level entry (joint exports, SAM2
#: exports' size record, training checkpoints), or, in a plain state dict, which segment_anything must
#: load with its strict `load_state_dict`, an entry of the dict's `_metadata` (torch's own per-module
#: record, which `load_state_dict` and `weights_only` loading keep).
WRITER_KEY = "medicosam"
#: What `medicosam export` writes of this family (`export_sam`: the model's plain state dict).
EXPORT_NOTE = "segment_anything's layout: segment_anything.sam_model_registry[arch](checkpoint=path) loads it"

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class LoadedSam:
    """A ready SAM model and where it came from.

    Attributes:
        sam: the `segment_anything.modeling.Sam` (a `TinyVitSam` for LiteMedSAM), in eval mode on the
            requested device.
        config: its architecture (`SamConfig`; `LiteSamConfig` for LiteMedSAM).
        decoder_state: the segmentation decoder's state dict when the file carried one.
        source: what the caller asked for (registry name, path or URL).
        path: the local file that was read.
        model_id: first 16 hex digits of the file's xxh128, a stable key for embedding caches.
        family: its `ModelFamily` (engine, packages, capabilities).
    """

    sam: Any
    config: Any
    decoder_state: Optional[Dict[str, Any]]
    source: str
    path: Path
    model_id: str
    family: ModelFamily = FAMILIES["sam"]

    @property
    def model(self):
        return self.sam

    @property
    def low_res_size(self) -> int:
        """Side of its mask decoder's low-res logits (SAM: 256 at 1024 px; LiteMedSAM: 256 at 256 px)."""
        return int(self.sam.prompt_encoder.mask_input_size[0])


@dataclasses.dataclass
class LoadedSam2:
    """A ready SAM2 / MedSAM2 model (`sam2`'s SAM2VideoPredictor, eval mode) and where it came from.

    `load_sam` returns one for SAM2 files.
    """

    sam2: Any
    config: Any  # medicosam.sam2_models.Sam2Config
    source: str
    path: Path
    model_id: str
    family: ModelFamily = FAMILIES["sam2"]

    @property
    def model(self):
        return self.sam2

    @property
    def low_res_size(self) -> int:
        return self.config.image_size // 4


def load_checkpoint_file(path: Union[str, Path]) -> Dict[str, Any]:
    """The dict stored in a checkpoint file, read without ever executing code from it.

    A file that weights_only refuses is read again with inert placeholders for its Python objects;
    it loads if it has the weights of a known layout (`_WEIGHT_KEYS`), and then only those return.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"Checkpoint file {path.resolve()} does not exist.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # Python objects beyond weights_only's allowlist, or not a pickle
        obj = _load_weights_inertly(path)
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError... on damaged files
        raise _get_unreadable_error(path, e) from e
    if not isinstance(obj, Mapping):
        raise ModelError(f"{path} holds a {type(obj).__name__}, not a state dict.")
    return obj if isinstance(obj, dict) else dict(obj)  # an OrderedDict keeps its `_metadata`


def is_medicosam_checkpoint(obj: Mapping[str, Any]) -> bool:
    """Whether MedicoSAM wrote this checkpoint (`WRITER_KEY`): then its architecture, tiny or not, is
    one MedicoSAM trained or built, so no command asks for allow_custom (`--allow-custom`) to load it.
    The mark says where a file comes from, it proves nothing: size limits and the memory check guard
    every file alike."""
    return isinstance(obj.get(WRITER_KEY), Mapping) or WRITER_KEY in (getattr(obj, "_metadata", None) or {})


def get_writer_record() -> Dict[str, str]:
    """What a file MedicoSAM writes records under `WRITER_KEY` (see `is_medicosam_checkpoint`)."""
    from medicosam import __version__

    return {"writer": f"medicosam {__version__}"}


def get_sam_state_dict(
    obj: Mapping[str, Any], source: str = "checkpoint"
) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """(plain SAM state dict, decoder state dict or None) from any supported layout.

    Layouts: a plain SAM state dict; micro-sam / torch-em dicts with `model_state` (and
    `decoder_state`); anything under a `state_dict` key; keys prefixed by `module.`, `sam.`,
    `module.sam.` or `_orig_mod.`.
    """
    if isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    decoder = obj.get("decoder_state")
    if isinstance(obj.get("model_state"), Mapping):
        obj = obj["model_state"]
    sam_state = _strip_wrapper_prefixes(obj)
    if not any(key.startswith(_SAM_PARTS) for key in sam_state):
        hint = (" It looks like a segmentation decoder: load it with load_decoder_state."
                if any(key.startswith(_UNETR_PARTS) for key in sam_state) else "")
        raise ModelError(
            f"{source} holds no SAM weights (no image_encoder.*, prompt_encoder.*, mask_decoder.* keys; "
            f"top-level keys: {_summarize_keys(list(obj))}).{hint}"
        )
    return sam_state, (_strip_wrapper_prefixes(decoder) if isinstance(decoder, Mapping) else None)


def check_sam_state(state: Mapping[str, Any], *, allow_custom: bool = False,
                    source: str = "checkpoint") -> SamConfig:
    """The architecture of a plain SAM state dict, or an error naming everything that differs.

    Keys are compared with a model built on the `meta` device, which costs no memory even for
    ViT-H. With `allow_custom=False` only the official ViT-b/l/h architectures pass, because
    those are the ones `segment_anything.sam_model_registry` (and other SAM tools) can load;
    `load_sam` sets it for the files MedicoSAM wrote (`is_medicosam_checkpoint`).
    """
    try:
        config = detect_config(state)
    except KeyError as e:
        raise ModelError(
            f"{source} is not a complete SAM state dict: it lacks {e.args[0]!r}, which every SAM has."
        ) from None
    except ModelError as e:
        raise ModelError(f"{source} is not a usable SAM checkpoint: {e}.") from None
    problems = get_state_problems(state, _get_expected_shapes(config))
    if not allow_custom and config.arch == "custom":
        problems.append(
            f"a non-official architecture ({_describe_config_difference(config)}) in a file MedicoSAM did not "
            "write: segment_anything.sam_model_registry cannot load it; if you trust it, pass --allow-custom "
            "(allow_custom=True) to build it with MedicoSAM's builder"
        )
    if problems:
        raise ModelError(f"{source} cannot be loaded as a SAM model:\n  - " + "\n  - ".join(problems))
    return config


def get_checked_config(state: Mapping[str, Any], source: str = "checkpoint") -> SamConfig:
    """The architecture of a plain SAM state dict whose every key and shape is that architecture's (the
    family-module call `export_sam` and the trainer make; any size, as for MedicoSAM's own files)."""
    return check_sam_state(state, allow_custom=True, source=source)


def get_state_problems(state: Mapping[str, Any], expected: Mapping[str, Tuple[int, ...]]) -> List[str]:
    """What differs between a state dict and the shapes a model expects (adapters named as such)."""
    problems = []
    unexpected = [key for key in state if key not in expected]
    adapters = [key for key in unexpected if "adapter" in key.lower()]
    if adapters:
        problems.append(f"{len(adapters)} adapter weights, as in SAM-Med2D, which plain SAM has no place "
                        f"for: {_summarize_keys(adapters)}")
    others = [key for key in unexpected if key not in adapters]
    if others:
        problems.append(f"{len(others)} unexpected keys: {_summarize_keys(others)}")
    missing = [key for key in expected if key not in state]
    if missing:
        problems.append(f"{len(missing)} missing keys: {_summarize_keys(missing)}")
    mismatched = [f"{key} {tuple(state[key].shape)} (expected {shape})"
                  for key, shape in expected.items() if key in state and tuple(state[key].shape) != shape]
    if mismatched:
        problems.append(f"{len(mismatched)} tensors of unexpected shape: {', '.join(mismatched[:4])}")
    return problems


def load_sam(
    checkpoint: Union[str, Path],
    *,
    device: str = "cpu",
    allow_custom: bool = False,
    offline: Optional[bool] = None,
    progress: Optional[ProgressCallback] = None,
) -> Union[LoadedSam, LoadedSam2]:
    """Load a SAM model from a registry name, a local file or an http(s) URL (SAM2 files: a `LoadedSam2`).

    `allow_custom` admits non-official SAM sizes in files MedicoSAM did not write; its own files
    (`is_medicosam_checkpoint`) load without it, in every command alike.
    """
    path = resolve_checkpoint(checkpoint, offline=offline, progress=progress)
    obj = load_checkpoint_file(path)
    return get_model_family(obj).get_module().load(obj, checkpoint=checkpoint, path=path, device=device,
                                                   allow_custom=allow_custom or is_medicosam_checkpoint(obj))


def recognises(obj: Mapping[str, Any]) -> bool:
    """True for a file with SAM weights in any layout `get_sam_state_dict` unwraps (the SAM family's rule)."""
    try:
        get_sam_state_dict(obj)
    except ModelError:
        return False
    return True


def load(obj: Mapping[str, Any], *, checkpoint, path: Path, device: str, allow_custom: bool) -> LoadedSam:
    """The SAM (ViT) model of a checkpoint's dict: its architecture from the shapes, every key checked."""
    import torch

    sam_state, decoder_state = get_sam_state_dict(obj, source=str(path))
    config = check_sam_state(sam_state, allow_custom=allow_custom, source=str(path))
    prepare_state(sam_state, decoder_state, device, source=str(path))
    with torch.device(device):  # random init on the target device: fast on GPUs, no CPU copy
        sam = build_sam(config)
    sam.load_state_dict(sam_state)
    return LoadedSam(sam=sam.to(device).eval(), config=config, decoder_state=decoder_state,
                     source=str(checkpoint), path=path, model_id=get_loaded_id(path))


def build(config: SamConfig):
    """The family's builder (`medicosam.models.families`): `build_sam`."""
    return build_sam(config)


def read_config(values: Mapping[str, Any]) -> SamConfig:
    """A `SamConfig` from its `dataclasses.asdict` (what semantic checkpoints store)."""
    return SamConfig(**{**values, "encoder_global_attn_indexes": tuple(values["encoder_global_attn_indexes"])})


def prepare_state(sam_state: Mapping[str, Any], decoder_state: Optional[Mapping[str, Any]], device: str,
                  source: str) -> None:
    """Refuse a model too big for `device` and weights that are not finite, before anything is built."""
    _check_memory(sam_state, device, source=source)
    for state in (sam_state, decoder_state or {}):
        _check_tensors(state, source=source)


def get_loaded_id(path: Path) -> str:
    """The `model_id` of a loaded file (embedding cache keys)."""
    return get_checked_file_id(path)[:16]


def check_state_keys(state: Mapping[str, Any], expected: Mapping[str, Tuple[int, ...]], title: str) -> None:
    """ModelError titled `title` listing what differs, when anything does."""
    problems = get_state_problems(state, expected)
    if problems:
        raise ModelError(f"{title}:\n  - " + "\n  - ".join(problems))


def load_decoder_state(
    checkpoint: Union[str, Path],
    *,
    offline: Optional[bool] = None,
    progress: Optional[ProgressCallback] = None,
) -> Dict[str, Any]:
    """The segmentation decoder's state dict from a released decoder file or a joint checkpoint."""
    path = resolve_checkpoint(checkpoint, offline=offline, progress=progress)
    obj = load_checkpoint_file(path)
    if "decoder_state" in obj or "model_state" in obj:
        state = get_sam_state_dict(obj, source=str(path))[1]
        if state is None:
            raise ModelError(f"{path} holds a SAM model but no decoder_state.")
    else:
        state = _strip_wrapper_prefixes(obj)
        if not any(key.startswith(_UNETR_PARTS) for key in state):
            raise ModelError(f"{path} holds no segmentation decoder (keys: {_summarize_keys(list(state))}).")
    _check_tensors(state, source=str(path))
    return state


def export_sam(model_or_state: Any, path: Union[str, Path]) -> Path:
    """Write the model's plain state dict, its family's own layout: a SAM that
    `sam_model_registry[arch](checkpoint=path)` loads unchanged, a LiteMedSAM that its reference builder
    loads with strict=True (the family module's `EXPORT_NOTE`).

    Accepts a `Sam` (or `TinyVitSam`) module, a wrapper module (DDP, micro-sam's TrainableSAM) or any
    state-dict layout `get_sam_state_dict` reads. The file is replaced atomically. Its `_metadata` marks
    it as MedicoSAM's (`WRITER_KEY`), which strict loading ignores.
    """
    state = collections.OrderedDict(_get_exportable_state(model_or_state))
    state._metadata = {WRITER_KEY: get_writer_record()}
    return save_atomically(state, path)


def export_sam_with_decoder(model_or_state: Any, decoder_state: Mapping[str, Any],
                            path: Union[str, Path]) -> Path:
    """Write micro-sam's joint layout `{"model_state": sam, "decoder_state": decoder, "medicosam": info}`.

    For micro-sam-style tools that also run the segmentation decoder; `segment_anything`
    cannot load this file (use `export_sam` for that). `info` (`WRITER_KEY`) marks the file as
    MedicoSAM's and says which micro-sam call loads the decoder; micro-sam reads only the two weight
    entries, so it does not disturb micro-sam.
    """
    decoder = {key: _get_compact_tensor(value)
               for key, value in _strip_wrapper_prefixes(decoder_state).items()}
    return save_atomically({"model_state": _get_exportable_state(model_or_state), "decoder_state": decoder,
                            WRITER_KEY: {**get_writer_record(), **_get_decoder_info(decoder)}}, path)


def _get_decoder_info(decoder: Mapping[str, Any]) -> Dict[str, Any]:
    """How micro-sam loads this decoder. MedicoSAM's has 2 output channels (background, foreground);
    micro-sam's `get_predictor_and_decoder` builds its 3-channel instance decoder and fails on it."""
    head = decoder.get("out_conv.weight")
    channels = None if head is None else int(head.shape[0])
    return {
        "decoder_out_channels": channels,
        "load_decoder_with": (
            "predictor, state = micro_sam.util.get_sam_model(model_type, checkpoint_path=path, return_state=True); "
            "unetr = micro_sam.instance_segmentation.get_unetr(predictor.model.image_encoder, "
            f"state['decoder_state'], out_channels={channels}); not get_predictor_and_decoder, which expects "
            "micro-sam's 3-channel instance decoder"
        ),
    }


def save_atomically(obj: Any, path: Union[str, Path]) -> Path:
    """`torch.save` to a temporary file beside `path`, fsync, then rename over `path`.

    A crash or a failing save leaves either the old file or the new one, never half of one.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing_atomically(path) as temporary, open(temporary, "xb") as f:
        torch.save(obj, f)
    return path


def _get_exportable_state(model_or_state: Any) -> Dict[str, Any]:
    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else model_or_state
    sam_state, _ = get_sam_state_dict(state, source="the model to export")
    get_model_family(sam_state).get_module().get_checked_config(sam_state, source="the model to export")
    return {key: _get_compact_tensor(value) for key, value in sam_state.items()}


def get_export_note(path: Union[str, Path]) -> str:
    """What loads an exported model file (its family module's `EXPORT_NOTE`); the file is mapped, not read."""
    import torch

    return get_model_family(torch.load(path, map_location="cpu", weights_only=True, mmap=True)).get_module().EXPORT_NOTE


def get_model_family(state: Mapping[str, Any]) -> ModelFamily:
    """The family of a SAM-like state dict (any layout `get_sam_state_dict` reads): SAM unless another
    family recognises it, so SAM's checks name what an unknown file lacks."""
    return detect_family(state) or FAMILIES["sam"]


def _get_compact_tensor(tensor):
    """A detached, contiguous CPU tensor that owns exactly its bytes (torch.save writes whole storages)."""
    tensor = tensor.detach().to("cpu").contiguous()
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()
    return tensor


def _strip_wrapper_prefixes(state: Mapping[str, Any]) -> Dict[str, Any]:
    stripped = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        stripped[key] = value
    return stripped


def _get_expected_shapes(config: SamConfig) -> Dict[str, Tuple[int, ...]]:
    import torch

    with torch.device("meta"):
        sam = build_sam(config)
    return {key: tuple(value.shape) for key, value in sam.state_dict().items()}


def _describe_config_difference(config: SamConfig) -> str:
    """E.g. `image_size 256 (vit_b: 1024)`, against the official model of the same width if any."""
    arch = next((name for name, official in OFFICIAL_CONFIGS.items()
                 if official.encoder_embed_dim == config.encoder_embed_dim), "vit_b")
    official = OFFICIAL_CONFIGS[arch]
    return ", ".join(f"{field.name} {getattr(config, field.name)} ({arch}: {getattr(official, field.name)})"
                     for field in dataclasses.fields(SamConfig)
                     if getattr(config, field.name) != getattr(official, field.name))


def _summarize_keys(keys: List[str], limit: int = 6) -> str:
    """Keys that differ only in their numbers fold into one pattern (`blocks.N.Adapter.channel.N.weight
    (x12)`), so 48 adapter keys read as four entries; a key without siblings is shown as is."""
    groups: Dict[str, List[str]] = {}
    for key in keys:
        groups.setdefault(re.sub(r"(?<=\.)\d+(?=\.)", "N", key), []).append(key)
    entries = [members[0] if len(members) == 1 else f"{pattern} (x{len(members)})"
               for pattern, members in groups.items()]
    more = f", ... ({len(entries) - limit} more)" if len(entries) > limit else ""
    return ", ".join(entries[:limit]) + more


def _get_first_line(error: Exception) -> str:
    return (str(error).splitlines() or [""])[0]


class _Inert:
    """Stands for a global a checkpoint names beyond torch's weights_only allowlist (a model class,
    a dataset, a numpy array, `os.system`...). Creating, calling, filling or restoring one does
    nothing, so nothing the file names is imported or run."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:  # pickle's BUILD
        pass

    def __setitem__(self, key, value) -> None:  # SETITEMS of a pickled dict subclass
        pass

    def extend(self, items) -> None:  # APPENDS of a pickled list subclass
        pass


class _InertPickleModule:
    """A `pickle_module` for torch.load: its Unpickler returns torch's weights_only allowlist as is
    (tensors, dtypes, OrderedDict...) and an `_Inert` placeholder class for every other global,
    whose name it records in `replaced`."""

    __name__ = "pickle"  # torch.load reads it (to special-case dill)

    def __init__(self) -> None:
        import torch
        from torch._utils import IMPORT_MAPPING, NAME_MAPPING

        allowed = torch._weights_only_unpickler._get_allowed_globals()
        replaced = self.replaced = {}

        class Unpickler(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                # Python 2 names (`__builtin__.set`, which protocol 2 still writes), as weights_only reads them
                module, name = NAME_MAPPING.get((module, name), (IMPORT_MAPPING.get(module, module), name))
                full_name = f"{module}.{name}"
                if full_name in allowed:
                    return allowed[full_name]
                if full_name not in replaced:
                    replaced[full_name] = type(full_name, (_Inert,), {})
                return replaced[full_name]

        self.Unpickler = Unpickler

    def load(self, file, **kwargs) -> Any:  # torch's legacy format pickles its header separately
        return self.Unpickler(file, **kwargs).load()


def _load_weights_inertly(path: Path) -> Dict[str, Any]:
    """The `_WEIGHT_KEYS` entries of a file weights_only refused, read with inert placeholders.

    micro-sam's `best.pt` / `latest.pt` land here: torch-em pickles the model, the datasets and
    kornia augmentations into `init`. Their weights load; any other Python object is refused.
    TorchScript archives never do (weights_only=True raises RuntimeError for them), so torch.load
    cannot hand them to torch.jit.load here.
    """
    import torch

    unpickling = _InertPickleModule()
    try:
        with warnings.catch_warnings():  # torch's remarks on the skipped objects' classes (legacy format)
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=unpickling)
    except Exception as e:
        raise _get_unreadable_error(path, e, list(unpickling.replaced)) from e
    names = _summarize_keys(sorted(unpickling.replaced))
    weights = {key: obj[key] for key in _WEIGHT_KEYS if key in obj} if isinstance(obj, Mapping) else {}
    if not weights or not all(_is_tensor_dict(value) for value in weights.values()):
        raise ModelError(
            f"{path} ({_describe_file(path)}) is not a plain state dict: it holds Python objects ({names}) "
            f"beyond tensors in a {' / '.join(_WEIGHT_KEYS)} entry, and unpickling those could run arbitrary "
            "code, so MedicoSAM refuses to. If you trust its source, load it yourself and re-save only the "
            "tensors, e.g. torch.save(model.state_dict(), 'plain.pth')."
        )
    logger.info("%s: read %s only; its Python objects (%s) were skipped, not run", path, ", ".join(weights), names)
    return weights


def _is_tensor_dict(value: Any) -> bool:
    import torch

    return isinstance(value, Mapping) and all(isinstance(key, str) and isinstance(tensor, torch.Tensor)
                                              for key, tensor in value.items())


def _get_unreadable_error(path: Path, error: Exception, names: Sequence[str] = ()) -> ModelError:
    """What the file is and what failed, never torch's advice to retry with weights_only=False."""
    named = f", naming {_summarize_keys(sorted(names))}" if names else ""
    return ModelError(
        f"Cannot read checkpoint {path}: it is {_describe_file(path)}{named} ({type(error).__name__}: "
        f"{_get_first_line(error)}), so the file is incomplete, corrupt or not a PyTorch checkpoint. "
        "Download or export it again."
    )


def _describe_file(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (PyTorch's format)"
    if head == _LEGACY_MAGIC:
        return "a PyTorch checkpoint in the legacy (non-zip) format"
    if head.startswith(b"\x80"):
        return "a plain pickle, not written by torch.save"
    return "neither a zip archive nor a pickle"


def _check_tensors(state: Mapping[str, Any], source: str) -> None:
    """Refuse tensors that claim more elements than the file stores (zero strides) and NaN / inf
    weights, which load fine and then give empty masks everywhere. Cheap: one pass, no copies."""
    import torch

    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            continue
        if tensor.numel() * tensor.element_size() > tensor.untyped_storage().nbytes():
            raise ModelError(f"{source}: {key} claims {tuple(tensor.shape)} values but the file stores "
                                  f"{tensor.untyped_storage().nbytes()} bytes for it: the file is not a trained "
                                  "model. Download or export it again.")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ModelError(f"{source}: {key} holds {bad} NaN or infinite values (of {tensor.numel()}), so "
                                  "every mask would be empty: the training run that wrote it diverged or the "
                                  "file is corrupt. Use an earlier checkpoint or download it again.")


def _check_memory(state: Mapping[str, Any], device: str, source: str) -> None:
    """Refuse, before building, a model that cannot fit (the builder would fail after trying)."""
    import torch

    needed = 4 * sum(tensor.numel() for tensor in state.values())  # built in float32
    device = torch.device(device)
    if device.type == "cuda":
        available, what = torch.cuda.mem_get_info(device)[0], "free"
    elif hasattr(os, "sysconf"):  # Linux, macOS (also the memory mps shares)
        available, what = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "in total"
    else:
        return
    if needed > available:
        raise ModelError(f"{source}: building this SAM model needs {needed / 1e9:.1f} GB but the {device.type} "
                              f"device has {available / 1e9:.1f} GB {what}: use a machine with more memory "
                              "(or check the file: its sizes may be corrupt).")
