"""Semantic inference on whole images and volumes, at their own resolution.

- 2D models run slice by slice (a 2D image is a one-slice volume), batched.
- 3D models run MONAI's `sliding_window_inference` over the whole volume: windows of
  (patch_depth, S, S) with `overlap`, blended with Gaussian weights, so every slice gets context
  from both sides and window seams do not show.
Slices are resized and padded to the model size S exactly as in training (`data.get_model_input`);
the logits are cropped, resized back bilinearly to the slice size and only then turned into labels
by argmax, so no label map is ever interpolated. Intensities go through the same per-volume window
as in training (default: the core's "auto").
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import get_model_input, get_windowed_volume

PathLike = Union[str, Path]


def _get_labels_at_size(logits: torch.Tensor, height: int, width: int) -> np.ndarray:
    """(n, C, S, S) logits of padded slices -> (n, height, width) labels (crop, bilinear resize, argmax)."""
    from medicosam.preprocessing import get_resized_shape

    h, w = get_resized_shape((height, width), logits.shape[-1])
    logits = logits[..., :h, :w].float()
    if (h, w) != (height, width):
        logits = F.interpolate(logits, (height, width), mode="bilinear", align_corners=False)
    return logits.argmax(1).to(torch.uint8).cpu().numpy()


@torch.no_grad()
def predict_slices(model: nn.Module, image: np.ndarray, batch_size: int = 4) -> np.ndarray:
    """Labels (n, h, w) of 8-bit slices (n, h, w[, 3]) with a 2D model."""
    device = next(model.parameters()).device
    size = model.config.image_size
    labels = [_get_labels_at_size(model(get_model_input(image[i:i + batch_size], size).to(device)),
                                  *image.shape[1:3])
              for i in range(0, len(image), batch_size)]
    return np.concatenate(labels)


@torch.no_grad()
def predict_patches(model: nn.Module, image: np.ndarray, overlap: float = 0.5) -> np.ndarray:
    """Labels (n, h, w) of an 8-bit volume (n, h, w[, 3]) with a 3D model, by Gaussian-blended sliding windows."""
    from monai.inferers import sliding_window_inference

    device = next(model.parameters()).device
    config = model.config
    volume = get_model_input(image, config.image_size).transpose(0, 1)[None]  # (1, 3, n, S, S)
    logits = sliding_window_inference(volume, roi_size=(config.patch_depth, config.image_size, config.image_size),
                                      sw_batch_size=1, predictor=model, overlap=overlap, mode="gaussian",
                                      sw_device=device, device="cpu")
    return _get_labels_at_size(logits[0].transpose(0, 1), *image.shape[1:3])


def predict_volume(model: nn.Module, volume: np.ndarray, axis: int = 0, window=None, batch_size: int = 4,
                   overlap: float = 0.5) -> np.ndarray:
    """Class labels for a KJI volume (or a (1, H, W[, 3]) 2D image) at its own size.

    Args:
        model: a semantic model (2D: slice by slice along `axis`; 3D: sliding windows along `axis`).
        volume: intensities of any type; (K, J, I) grey or (K, J, I, 3) RGB.
        axis: the slicing axis (the one the model was trained along).
        window: intensity window; default the core's "auto" for the whole volume.
        batch_size: slices per forward pass (2D models).
        overlap: window overlap (3D models).
    """
    was_training = model.training
    model.eval()
    image = np.moveaxis(get_windowed_volume(np.asarray(volume), window), axis, 0)
    if model.config.ndim == 2:
        labels = predict_slices(model, image, batch_size)
    else:
        labels = predict_patches(model, image, overlap)
    model.train(was_training)
    return np.moveaxis(labels, 0, axis)


def predict_image(model: nn.Module, image: np.ndarray, window=None) -> np.ndarray:
    """Class labels (H, W) of one 2D image (H, W) or (H, W, 3) with a 2D model."""
    return predict_volume(model, np.asarray(image)[None], window=window)[0]


def predict_folder(model: nn.Module, images_dir: PathLike, output_dir: PathLike, axis: int = 0,
                   batch_size: int = 4, overlap: float = 0.5) -> List[Path]:
    """Predict every image file of `images_dir` into `output_dir` under the same stem.

    2D images give `<stem>.png`; volumes give `<stem>.nii.gz` on the volume's exact grid.
    """
    import SimpleITK as sitk

    from medicosam.volume_io import read_volume, write_mask

    from ..records import get_stem, list_images

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in list_images(images_dir):
        volume = read_volume(path)
        is_2d = volume.array.shape[0] == 1
        labels = predict_volume(model, volume.array, 0 if is_2d else axis, batch_size=batch_size, overlap=overlap)
        stem = get_stem(path).removesuffix("_0000")  # nnU-Net's channel tag
        if is_2d:
            out = output_dir / f"{stem}.png"
            sitk.WriteImage(sitk.GetImageFromArray(labels[0].astype(np.uint8)), str(out))
        else:
            out = write_mask(labels, volume, output_dir / f"{stem}.nii.gz")
        written.append(out)
    return written
