"""Procedural 2D/3D phantoms: a body with several ellipses and organ-like blobs, modality-like textures.

For fast unit tests and for training tiny models, next to (never instead of) the real images of
`sample_data`. Everything is drawn from the `rng` passed in, so a seed gives the same phantom.

- "ct": Hounsfield units (int16): air -1000, soft tissue 40, objects from lung-like -800 to
  bone-like 800 HU, Gaussian noise of 15 HU: exercises the CT windowing path.
- "mr": float32 arbitrary units with a smooth multiplicative bias field and Rician noise.
- "us": uint8 B-mode-like echogenicity times Rayleigh speckle, with depth attenuation along
  array axis 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple, Union

import numpy as np

from medicosam.errors import InputError
from medicosam.prompts import get_largest_component

MODALITIES = ("ct", "mr", "us")
Shape = Union[int, Sequence[int]]

# Per modality: background (outside the body), body, and the object values objects draw from.
_TISSUES = {
    "ct": (-1000.0, 40.0, (-800.0, -100.0, 150.0, 300.0, 800.0)),
    "mr": (0.0, 300.0, (60.0, 140.0, 550.0, 750.0, 950.0)),
    "us": (0.0, 0.5, (0.08, 0.2, 0.85, 1.0)),
}


def make_phantom_2d(size: Shape, n_objects: int, modality: str,
                    rng: Union[np.random.Generator, int]) -> Tuple[np.ndarray, np.ndarray]:
    """(image, instances) of shape `size` (int -> square): ids 1..n, up to `n_objects` objects."""
    return _make_phantom(_get_shape(size, 2), n_objects, modality, np.random.default_rng(rng))


def make_phantom_3d(size: Shape, n_objects: int, modality: str,
                    rng: Union[np.random.Generator, int]) -> Tuple[np.ndarray, np.ndarray]:
    """(volume, instances) in KJI order: ellipsoids and blobs inside an ellipsoidal body."""
    return _make_phantom(_get_shape(size, 3), n_objects, modality, np.random.default_rng(rng))


def write_phantom_dataset(directory: Union[str, Path], n: int, size: int = 128, n_objects: int = 4,
                          modalities: Sequence[str] = MODALITIES, seed: int = 0) -> Path:
    """Write `n` 2D phantoms in the folder layout of `FolderDataset2D`; returns `directory`.

    `images/<modality>_phantom--phantoms--<i>.{png,mha}` (uint8 as PNG; CT HU and MR floats as MHA,
    so the reader must window them) and `labels/<same stem>.png` (uint8 instance ids). Modalities
    cycle through `modalities`; phantom i uses the generator (seed, i).
    """
    import SimpleITK as sitk

    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    (directory / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        modality = modalities[i % len(modalities)]
        image, instances = make_phantom_2d(size, n_objects, modality, np.random.default_rng((seed, i)))
        stem = f"{modality}_phantom--phantoms--{i:04d}"
        suffix = ".png" if image.dtype == np.uint8 else ".mha"
        sitk.WriteImage(sitk.GetImageFromArray(image), str(directory / "images" / f"{stem}{suffix}"))
        sitk.WriteImage(sitk.GetImageFromArray(instances.astype(np.uint8)),
                        str(directory / "labels" / f"{stem}.png"))
    return directory


def _get_shape(size: Shape, ndim: int) -> Tuple[int, ...]:
    shape = (int(size),) * ndim if np.isscalar(size) else tuple(int(s) for s in size)
    if len(shape) != ndim or min(shape) < 16:
        raise InputError(f"phantom size {size}: give {ndim} sizes of at least 16 pixels")
    return shape


def _make_phantom(shape: Tuple[int, ...], n_objects: int, modality: str,
                  rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    if modality not in _TISSUES:
        raise InputError(f"phantom modality {modality!r}: use one of {MODALITIES}")
    if not 0 < n_objects < 256:
        raise InputError(f"n_objects={n_objects}: use 1 to 255 objects per phantom")
    background, body_value, object_values = _TISSUES[modality]
    roughness = _get_smooth_noise(shape, max(2.0, min(shape) / 24), rng)
    coords = np.indices(shape, dtype=np.float32)
    center = np.array(shape, dtype=np.float32) / 2
    body_radii = np.array(shape, dtype=np.float32) * rng.uniform(0.4, 0.47, len(shape))
    body = _get_distance(coords, center, body_radii, np.eye(len(shape))) < 1 + 0.02 * roughness
    instances = _draw_objects(shape, body, roughness, n_objects, rng)
    values = np.where(body, body_value, background).astype(np.float32)
    for object_id in range(1, int(instances.max()) + 1):
        values[instances == object_id] = rng.choice(object_values) * rng.uniform(0.95, 1.05)
    return _apply_texture(values, modality, rng), instances


def _draw_objects(shape: Tuple[int, ...], body: np.ndarray, roughness: np.ndarray, n_objects: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Non-overlapping rough blobs (odd ids) and ellipses (even ids) inside the body."""
    instances = np.zeros(shape, dtype=np.int32)
    inside = np.argwhere(body)
    ndim = len(shape)
    n_drawn = 0
    for _ in range(n_objects * 20):
        if n_drawn == n_objects:
            break
        radii = rng.uniform(0.05, 0.14, ndim) * min(shape)
        center = inside[rng.integers(len(inside))].astype(np.float32)
        rotation = _get_rotation(ndim, rng)
        extent = int(np.ceil(radii.max() * 1.8))
        box = tuple(slice(max(0, int(c) - extent), min(size, int(c) + extent + 1))
                    for c, size in zip(center, shape))
        coords = np.stack(np.meshgrid(*[np.arange(b.start, b.stop, dtype=np.float32) for b in box],
                                      indexing="ij"))
        is_blob = n_drawn % 2 == 0
        threshold = 1 + 0.35 * np.clip(roughness[box], -2, 2) if is_blob else 1.0
        # a rough threshold can split a blob: keep one piece so every object is connected
        obj = get_largest_component(_get_distance(coords, center, radii, rotation) < threshold)
        too_small = obj.sum() < 0.5 * np.prod(radii) * (np.pi if ndim == 2 else 4)
        if too_small or np.any(obj & ~body[box]) or np.any(obj & (instances[box] > 0)):
            continue
        n_drawn += 1
        instances[box][obj] = n_drawn
    return instances


def _get_distance(coords: np.ndarray, center: np.ndarray, radii: np.ndarray,
                  rotation: np.ndarray) -> np.ndarray:
    """Ellipsoidal distance: < 1 inside the ellipsoid (center, radii) rotated by `rotation`."""
    offset = coords - center.reshape((-1,) + (1,) * (coords.ndim - 1))
    local = np.tensordot(rotation.T, offset, axes=1)
    return np.sqrt(sum((local[i] / radii[i]) ** 2 for i in range(len(radii))))


def _get_rotation(ndim: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((ndim, ndim)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def _get_smooth_noise(shape: Tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation: organ outlines, bias fields."""
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return noise / max(float(noise.std()), 1e-6)


def _apply_texture(values: np.ndarray, modality: str, rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    shape = values.shape
    if modality == "ct":
        image = values + rng.normal(0, 15, shape) + 10 * _get_smooth_noise(shape, 2, rng)
        return np.clip(np.round(image), -1024, 3071).astype(np.int16)
    if modality == "mr":
        bias = np.exp(0.25 * _get_smooth_noise(shape, min(shape) / 3, rng))
        signal = values * bias
        return np.hypot(signal + rng.normal(0, 12, shape), rng.normal(0, 12, shape)).astype(np.float32)
    speckle = ndimage.gaussian_filter(rng.rayleigh(np.sqrt(2 / np.pi), shape), 0.7)
    depth = np.exp(-1.2 * np.arange(shape[0]) / shape[0]).reshape((-1,) + (1,) * (len(shape) - 1))
    return np.clip(255 * values * speckle * depth, 0, 255).astype(np.uint8)
