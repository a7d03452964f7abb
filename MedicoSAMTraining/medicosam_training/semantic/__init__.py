"""Semantic segmentation with SAM encoders (paper section 2.4) and the paper's baselines.

See docs/semantic.md. Modules: `models` (2D / 3D SAM models, checkpoints), `adapters` (MA-SAM depth
adapters), `encoder` (position embeddings for other input sizes), `data`, `train`, `infer`,
`baselines` (MONAI SwinUNETR / U-Net), `nnunet_export`, `cli`.
"""

from .baselines import BaselineConfig, build_baseline_model
from .data import (
    SemanticCase,
    SemanticPatchDataset,
    SemanticSliceDataset,
    get_case,
    get_split_records,
    read_case,
)
from .encoder import get_resized_sam_state, get_sam_at_size
from .infer import predict_folder, predict_image, predict_volume
from .models import (
    SemanticConfig,
    build_semantic_model,
    get_semantic_model,
    load_semantic_model,
    save_semantic_model,
)
from .nnunet_export import check_nnunet_dataset, export_nnunet_dataset
from .train import SemanticTrainConfig, get_semantic_loss, train_semantic

__all__ = [
    "BaselineConfig", "SemanticCase", "SemanticConfig", "SemanticPatchDataset", "SemanticSliceDataset",
    "SemanticTrainConfig", "build_baseline_model", "build_semantic_model", "check_nnunet_dataset",
    "export_nnunet_dataset", "get_case", "get_resized_sam_state", "get_sam_at_size", "get_semantic_loss",
    "get_semantic_model", "get_split_records", "load_semantic_model", "predict_folder", "predict_image",
    "predict_volume", "read_case", "save_semantic_model", "train_semantic",
]
