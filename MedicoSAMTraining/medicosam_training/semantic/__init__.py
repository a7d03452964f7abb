"""Semantic segmentation with SAM encoders (paper section 2.4) and the paper's baselines.

See docs/semantic.md. Modules: `models` (2D / 3D SAM models, checkpoints), `adapters` (MA-SAM depth
adapters), `encoder` (position embeddings for other input sizes), `data`, `train`, `infer`,
`baselines` (MONAI SwinUNETR / U-Net), `nnunet_export`, `cli`.

The names below are imported on first use (PEP 562): registering `cli` with the `medicosam` command
imports this package, and must not import torch.
"""

import importlib

_MODULES = {
    "baselines": ("BaselineConfig", "build_baseline_model"),
    "data": ("SemanticCase", "SemanticPatchDataset", "SemanticSliceDataset", "get_case", "get_split_records",
             "read_case"),
    "encoder": ("get_resized_sam_state", "get_sam_at_size"),
    "infer": ("predict_folder", "predict_image", "predict_volume"),
    "models": ("SemanticConfig", "build_semantic_model", "get_semantic_model", "load_semantic_model",
               "save_semantic_model"),
    "nnunet_export": ("check_nnunet_dataset", "export_nnunet_dataset"),
    "train": ("SemanticTrainConfig", "get_semantic_loss", "train_semantic"),
}
_MODULE_OF = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
