"""SAM on the slices of a volume: lazy, cached slice embeddings and batched prompt decoding.

The image path is exactly `segment_anything.SamPredictor`'s (uint8 RGB -> longest-side resize,
`medicosam.preprocessing` -> `Sam.preprocess` -> image encoder), so masks equal the official
predictor's for the same model and prompts. What this adds: intensity windows computed once per
volume (slices of a volume are consistent), an embedding cache shared across slices, axes and
calls, and several objects decoded in one mask-decoder call by the core's batched decoding
(`medicosam.decoding`, shared with training, which owns the rule "one point -> three masks, keep
the best predicted IoU"). Optionally (see `medicosam.acceleration`): SDPA attention and bf16
autocast, applied per call so the model is left as it was given (predictors of both speeds can
share one model), several slices per encoder call, and embeddings cached in half precision.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import uuid
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Union

import numpy as np

from .embedding_cache import EmbeddingCache
from .errors import InputError
from .preprocessing import get_input_transform, get_resized_shape
from .prompts import Prompts

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .acceleration import AccelerationConfig
    from .normalization import IntensityWindow
    from .propagation import PropagationConfig, PropagationResult


@dataclasses.dataclass
class SliceEmbedding:
    """Image-encoder output of one slice plus the sizes needed to map prompts and masks."""

    features: object  # torch.Tensor (1, C, h, w)
    input_size: tuple  # (H, W) after ResizeLongestSide
    original_size: tuple  # (H, W) of the slice

    @property
    def nbytes(self) -> int:
        return self.features.element_size() * self.features.numel()


@dataclasses.dataclass
class Prediction:
    """Masks for n objects on one slice."""

    masks: np.ndarray  # (n, H, W) bool
    logits: np.ndarray  # (n, h, w) float32 low-res logits, usable as the next mask prompt
    scores: np.ndarray  # (n,) predicted IoU of the returned masks


def get_mask_logits(mask: np.ndarray, low_res_size: int, eps: float = 1e-3) -> np.ndarray:
    """A binary full-resolution mask as SAM low-res logits (for mask prompts from projected masks).

    The binary mask is resized (longest side = `low_res_size`), re-binarised and padded with
    background, then mapped to +-log((1 - eps) / eps): padding stays "outside", so small objects
    in non-square slices remain visible (micro-sam's current rule).
    """
    import torch
    import torch.nn.functional as F

    new_h, new_w = get_resized_shape(mask.shape, low_res_size)
    resized = F.interpolate(torch.as_tensor(mask, dtype=torch.float32)[None, None], (new_h, new_w),
                            mode="bilinear", align_corners=False)[0, 0] > 0.5
    out = np.zeros((low_res_size, low_res_size), dtype=bool)
    out[:new_h, :new_w] = resized.numpy()
    value = float(np.log((1 - eps) / eps))
    return np.where(out, value, -value).astype(np.float32)


def get_speed_options(fast: bool) -> dict:
    """`VolumePredictor` arguments of the one speed switch the tools offer.

    On: SDPA attention, bf16 autocast where the device runs it natively, a bf16 embedding cache
    (masks match the reference at IoU >= 0.98); a TinyViT encoder (LiteMedSAM) runs its fp32 inference
    copy instead (`VolumePredictor._get_encoder`). Off: the official fp32 path, the reference.
    """
    if not fast:
        return {}
    from .acceleration import AccelerationConfig

    return {"acceleration": AccelerationConfig(), "cache_dtype": "bfloat16"}


def get_volume_predictor(loaded, volume: np.ndarray, fast: bool = False, **kwargs):
    """The predictor of a loaded model: its family's engine (`medicosam.models.families`).

    Every engine answers the same calls (`predict`, `predict_mask`, `propagate`, `get_embedding(s)`),
    so every tool chooses its model without knowing its family.
    """
    return loaded.family.open_predictor(loaded, volume, fast=fast, **kwargs)


def get_checked_volume(volume) -> np.ndarray:
    """A predictor's volume: (K, J, I), a colour volume (K, J, I, 3), or a 2D image as one slice."""
    volume = np.asarray(volume)
    if volume.ndim == 2:
        volume = volume[None]
    if not (volume.ndim == 3 or (volume.ndim == 4 and volume.shape[-1] == 3)):
        raise InputError(f"expected a volume (K, J, I), a colour volume (K, J, I, 3) or a 2D image, "
                         f"got shape {volume.shape}")
    return volume


class VolumePredictor:
    """Interactive SAM on one volume (KJI array; a 2D image is a volume with one slice).

    Args:
        sam: a `segment_anything` `Sam` model.
        volume: (K, J, I) intensities, (K, J, I, 3) colour (as `medicosam.volume_io` reads RGB
            files; SAM sees the colours), or (H, W) for a single grey image. A single colour image
            is (1, H, W, 3): (H, W, 3) alone would read as three grey slices.
        window: intensity window computed on the whole volume; "auto" per-volume default if None.
        model_id: identifies the weights in cache keys (a checkpoint fingerprint).
        cache: embedding cache, shareable between predictors; a 2 GiB one if None.
        device: torch device for the model ("cpu", "cuda", "mps"); the model's own if None.
        acceleration: the fast path for this predictor's calls (`medicosam.acceleration`; a TinyViT
            encoder runs its inference copy, `_get_encoder`); None: the official fp32 path. Applied per
            call: `sam` is left as it was given.
        cache_dtype: dtype of cached features ("bfloat16", "float16" or a torch dtype): halves the
            cache's memory per slice; features go back to the model's dtype for decoding.
        decode_batch: most objects per mask-decoder call; None: 4 on the CPU (8 objects of ViT-b:
            4 per call 0.79x the time of one per call, 8 per call 1.17x, as the working set
            outgrows the caches), 32 on GPUs (where one call for all is the win).
    """

    def __init__(self, sam, volume: np.ndarray, window: Optional[IntensityWindow] = None, *,
                 model_id: str = "", volume_id: Optional[str] = None,
                 cache: Optional[EmbeddingCache] = None, device=None,
                 acceleration: Optional[AccelerationConfig] = None, cache_dtype=None,
                 decode_batch: Optional[int] = None):
        from .acceleration import get_dtype
        from .normalization import get_intensity_window

        volume = get_checked_volume(volume)
        self.sam = sam if device is None else sam.to(device)
        self.device = next(self.sam.parameters()).device
        self.volume = volume
        self.window = window if window is not None else get_intensity_window(volume, "auto")
        self.model_id = model_id
        self.volume_id = volume_id or uuid.uuid4().hex
        self.cache = cache if cache is not None else EmbeddingCache()
        self.transform = get_input_transform(self.sam)
        self.image_size = self.transform.image_size
        self.model_dtype = next(self.sam.parameters()).dtype
        self.cache_dtype = get_dtype(cache_dtype)
        self.acceleration = acceleration
        self.decode_batch = decode_batch or (4 if self.device.type == "cpu" else 32)
        self.encoder_calls = 0  # image-encoder forward passes
        self.encoded_slices = 0  # slices they embedded (more than the calls when batched)

    @classmethod
    def from_loaded(cls, loaded, volume: np.ndarray, fast: bool = False, **kwargs) -> VolumePredictor:
        """Predictor for a `medicosam.models.checkpoint.LoadedSam` (`fast`: see `get_speed_options`)."""
        return cls(loaded.sam, volume, model_id=loaded.model_id, **{**get_speed_options(fast), **kwargs})

    @property
    def low_res_size(self) -> int:
        """Side of the mask decoder's low-res logits (SAM: 256 at 1024 px; LiteMedSAM: 256 at 256 px)."""
        return int(self.sam.prompt_encoder.mask_input_size[0])

    def get_slice(self, axis: int, index: int) -> np.ndarray:
        if not 0 <= index < self.volume.shape[axis]:
            raise InputError(f"slice {index} is outside the volume: axis {axis} has "
                             f"{self.volume.shape[axis]} slices (0..{self.volume.shape[axis] - 1})")
        return np.take(self.volume, index, axis=axis)

    def get_embedding(self, axis: int, index: int) -> SliceEmbedding:
        """The slice's embedding, from the cache or computed now (once)."""
        return self.cache.get_or_compute(self._get_key(axis, index), lambda: self._compute_embedding(axis, index))

    def get_embeddings(self, axis: int, indexes: Sequence[int], batch_size: int = 8) -> List[SliceEmbedding]:
        """Embeddings of several slices; the missing ones computed `batch_size` slices per encoder call.

        One batched encoder call is much faster per slice than single calls on a GPU (volume
        embedding, propagation look-ahead, background prefetch); on a CPU it is about even.
        """
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        computed = {}
        missing = [i for i in dict.fromkeys(int(i) for i in indexes) if self._get_key(axis, i) not in self.cache]
        for start in range(0, len(missing), batch_size):
            chunk = missing[start: start + batch_size]
            for index, embedding in zip(chunk, self._compute_embeddings(axis, chunk)):
                computed[index] = self.cache.get_or_compute(self._get_key(axis, index), lambda e=embedding: e)
        return [computed[int(i)] if int(i) in computed else self.get_embedding(axis, int(i)) for i in indexes]

    def _get_key(self, axis: int, index: int) -> tuple:
        # the precision is part of the key: a shared cache never hands fast features to the reference path
        precision = (self.acceleration, str(self.cache_dtype))
        return (self.volume_id, axis, index, self.model_id, self.window.key, precision)

    def _compute_embedding(self, axis: int, index: int) -> SliceEmbedding:
        return self._compute_embeddings(axis, [index])[0]

    def _compute_embeddings(self, axis: int, indexes: Sequence[int]) -> List[SliceEmbedding]:
        import torch

        images = [self.window.apply(self.get_slice(axis, index)) for index in indexes]
        resized = np.stack([self.transform.resize_image(image) for image in images])
        tensor = torch.as_tensor(resized, device=self.device).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad(), self._get_encoder() as encoder:
            features = encoder(self.sam.preprocess(tensor))
        features = features.to(self.cache_dtype or self.model_dtype)
        self.encoder_calls += 1
        self.encoded_slices += len(indexes)
        # one slice per cache item: a view would keep the whole batch alive until all are evicted
        parts = [features] if len(indexes) == 1 else [f[None].clone() for f in features]
        return [SliceEmbedding(part, tuple(resized.shape[1:3]), tuple(image.shape[:2]))
                for part, image in zip(parts, images)]

    @contextlib.contextmanager
    def _get_encoder(self):
        """The image encoder this predictor's path runs, for the block.

        Fast, a TinyViT (LiteMedSAM, MobileSAM): its inference copy (BatchNorms folded, GELUs fused) in
        the model's fp32, remade whenever the weights change (`tinyvit.get_current_inference_encoder`);
        not in bf16, which drops LiteMedSAM's box masks to IoU 0.92-0.95 against fp32 on real slices
        (docs/performance.md). Otherwise the model's encoder with this predictor's attention and autocast.
        """
        from .models.tinyvit import TinyViT, get_current_inference_encoder

        encoder = self.sam.image_encoder
        if self.acceleration is not None and isinstance(encoder, TinyViT):
            yield get_current_inference_encoder(encoder)
            return
        with self._get_speed(encoder), self._get_autocast():
            yield encoder

    def _get_speed(self, module):
        """This predictor's attention path for `module` (a part of `sam`) during the block."""
        from .acceleration import fast_attention

        return fast_attention(module, self.acceleration is not None and self.acceleration.sdpa)

    def _get_autocast(self):
        if self.acceleration is None:
            return contextlib.nullcontext()
        from .acceleration import get_autocast

        return get_autocast(self.device, self.acceleration.autocast)

    def predict(self, axis: int, index: int, prompts: Union[Prompts, Sequence[Prompts]],
                multimask: Optional[bool] = None) -> Prediction:
        """Masks for one or several objects on a slice.

        Objects with one positive point and nothing else get SAM's three masks and keep the one
        with the best predicted IoU (`medicosam.decoding.uses_multimask`; `multimask` forces the
        head for all); objects that share a prompt layout are decoded together, `decode_batch` per
        mask-decoder call (one layout per call keeps each object's tokens as SAM's own encoder
        lays them out).
        """
        single = isinstance(prompts, Prompts)
        objects: List[Prompts] = [prompts] if single else list(prompts)
        if not objects:
            raise InputError("no objects to predict: give at least one Prompts")
        embedding = self.get_embedding(axis, index)
        for prompt in objects:
            self._check_prompt(prompt, embedding.original_size)
        flags = [self._use_multimask(p) if multimask is None else multimask for p in objects]
        groups: dict = {}
        for i, (prompt, flag) in enumerate(zip(objects, flags)):
            layout = (flag, prompt.box is not None, prompt.mask is not None or prompt.logits is not None)
            groups.setdefault(layout, []).append(i)
        h, w = embedding.original_size
        masks = np.zeros((len(objects), h, w), dtype=bool)
        logits = np.zeros((len(objects), self.low_res_size, self.low_res_size), dtype=np.float32)
        scores = np.zeros(len(objects), dtype=np.float32)
        for (flag, _, _), group in groups.items():
            for start in range(0, len(group), self.decode_batch):
                indexes = group[start: start + self.decode_batch]
                chunk_masks, chunk_logits, chunk_scores = self._decode(embedding, [objects[i] for i in indexes], flag)
                masks[indexes], logits[indexes], scores[indexes] = chunk_masks, chunk_logits, chunk_scores
        return Prediction(masks, logits, scores)

    def predict_mask(self, axis: int, index: int, prompts: Prompts) -> np.ndarray:
        """The 2D bool mask of one object (the callable propagation needs)."""
        return self.predict(axis, index, prompts).masks[0]

    def propagate(self, axis: int, seeds: dict, config: Optional[PropagationConfig] = None,
                  progress: Optional[Callable[[int, int], None]] = None,
                  should_cancel: Optional[Callable[[], bool]] = None,
                  lookahead: Optional[int] = None) -> PropagationResult:
        """Propagate seed masks {slice index: 2D mask} along `axis`; embeddings only for reached slices.

        `lookahead` > 1 embeds that many slices ahead (in the direction of travel) per encoder call
        when a slice is missing: faster on a GPU, at most `lookahead - 1` wasted slices per side.
        Default (None): 8 on CUDA, 1 (no look-ahead) elsewhere.
        """
        from .propagation import PropagationConfig, propagate_mask

        if lookahead is None:
            lookahead = 8 if self.device.type == "cuda" else 1
        n_slices = self.volume.shape[axis]
        last: Optional[int] = None

        def predict(index: int, prompts: Prompts) -> np.ndarray:
            nonlocal last
            if lookahead > 1 and self._get_key(axis, index) not in self.cache:
                origin = last if last is not None else min(seeds, key=lambda s: abs(int(s) - index))
                step = 1 if index > origin else -1
                ahead = [i for i in range(index, index + step * lookahead, step) if 0 <= i < n_slices]
                self.get_embeddings(axis, ahead, batch_size=lookahead)
            last = index
            return self.predict_mask(axis, index, prompts)

        return propagate_mask(predict, seeds, n_slices, config or PropagationConfig(), progress, should_cancel)

    @staticmethod
    def _use_multimask(prompt: Prompts) -> bool:
        from .decoding import uses_multimask

        return uses_multimask(prompt.labels, prompt.box is not None,
                              prompt.mask is not None or prompt.logits is not None)

    @staticmethod
    def _check_prompt(prompt: Prompts, size: tuple) -> None:
        h, w = size
        if len(prompt.points) == 0 and prompt.box is None:
            raise InputError("an object needs at least one point or a box")
        if prompt.box is None and prompt.mask is None and prompt.logits is None and not prompt.labels.any():
            logger.warning("an object prompted with negative points only has nothing to find: its mask is "
                           "SAM's guess (usually empty); add a positive point or a box")
        points = np.asarray(prompt.points, dtype=float).reshape(-1, 2)
        outside = (points[:, 0] < 0) | (points[:, 0] > w) | (points[:, 1] < 0) | (points[:, 1] > h)
        if outside.any():
            raise InputError(f"point {points[outside][0].tolist()} (x, y) is outside the {w} x {h} slice")
        if prompt.box is not None:
            x0, y0, x1, y1 = np.asarray(prompt.box, dtype=float)
            if x1 <= x0 or y1 <= y0:
                raise InputError(f"empty box {[x0, y0, x1, y1]}: x1 must exceed x0 and y1 must exceed y0")

    def _decode(self, embedding: SliceEmbedding, objects: List[Prompts], multimask: bool):
        import torch

        from .decoding import decode_prompts, get_heads_in_play, get_kept_output, get_prompt_tokens

        size, n = embedding.original_size, len(objects)
        points = [self.transform.resize_coords(np.asarray(p.points, np.float32).reshape(-1, 2), size)
                  for p in objects]
        boxes = [None if p.box is None else self.transform.resize_coords(np.reshape(p.box, (2, 2)), size)
                 for p in objects]
        coords, labels = get_prompt_tokens(points, [p.labels for p in objects], boxes)
        mask_logits = None
        if objects[0].mask is not None or objects[0].logits is not None:
            mask_logits = torch.as_tensor(np.stack([self._get_logits(p) for p in objects])[:, None],
                                          device=self.device)
        features = embedding.features.to(self.model_dtype).expand(n, -1, -1, -1)
        with torch.no_grad(), self._get_speed(self.sam.mask_decoder):
            low_res, iou = decode_prompts(self.sam, features, torch.as_tensor(coords, device=self.device),
                                          torch.as_tensor(labels, device=self.device), mask_logits)
            in_play = torch.as_tensor(get_heads_in_play(np.full(n, multimask), low_res.shape[1]), device=self.device)
            best = get_kept_output(iou, in_play)
            rows = torch.arange(n, device=self.device)
            low_res, iou = low_res[rows, best][:, None], iou[rows, best]
            masks = self.sam.postprocess_masks(low_res, embedding.input_size, embedding.original_size)
        return ((masks[:, 0] > self.sam.mask_threshold).cpu().numpy(), low_res[:, 0].float().cpu().numpy(),
                iou.float().cpu().numpy())

    def _get_logits(self, prompt: Prompts) -> np.ndarray:
        if prompt.logits is not None:
            return np.asarray(prompt.logits, dtype=np.float32)
        return get_mask_logits(np.asarray(prompt.mask, dtype=bool), self.low_res_size)
