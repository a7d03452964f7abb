"""SAM2 on the slices of a volume: the calls `VolumePredictor` answers, and native video propagation.

Slices are prompted through `sam2`'s own `SAM2ImagePredictor` (its transforms, prompt scaling and
mask decoding), with each slice's features kept in the core's `EmbeddingCache` (byte cap shared
with SAM), so masks equal the official image predictor's. Propagation treats the slices of one
axis as the frames of a video and runs `sam2`'s `SAM2VideoPredictor` with its memory bank: the
frames come from memory, made exactly as its JPEG loader makes them (uint8 RGB, PIL resize to a
square, ImageNet mean/std), one at a time when the engine asks for them, so nothing is written to
disk and only the frames reached are prepared. Intensity windows are per volume, as for SAM.

What the engine honours of `PropagationConfig`: direction, `max_slices`, `slice_range` and the stop
at the first empty mask beyond the outermost seeds; the prompt-derivation settings (mode, IoU stop,
box extension) belong to SAM's slice-by-slice prompting and do not apply (docs/models.md).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from .embedding_cache import EmbeddingCache
from .errors import InputError
from .predictor import Prediction, VolumePredictor, get_checked_volume
from .prompts import Prompts

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass
class Sam2Embedding:
    """`SAM2ImagePredictor`'s features of one slice (`image_embed`, `high_res_feats`) and its size."""

    features: dict
    original_size: tuple

    @property
    def nbytes(self) -> int:
        tensors = [self.features["image_embed"], *self.features["high_res_feats"]]
        return sum(t.element_size() * t.numel() for t in tensors)


class Sam2VolumePredictor:
    """Interactive SAM2 on one volume (KJI array, as `VolumePredictor`).

    Args:
        model: a `sam2` SAM2VideoPredictor (`LoadedSam2.sam2`).
        volume, window, model_id, volume_id, cache: as for `VolumePredictor`.
        fast: bf16 autocast on CUDA (sam2's own recommendation); elsewhere the fp32 path.
    """

    def __init__(self, model, volume: np.ndarray, window=None, *, model_id: str = "",
                 volume_id: Optional[str] = None, cache: Optional[EmbeddingCache] = None, fast: bool = False):
        import torch
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        from .normalization import get_intensity_window

        volume = get_checked_volume(volume)
        self.model, self.volume = model, volume
        self.device = model.device
        self.window = window if window is not None else get_intensity_window(volume, "auto")
        self.model_id, self.volume_id = model_id, volume_id or uuid.uuid4().hex
        self.cache = cache if cache is not None else EmbeddingCache()
        self.image_size = int(model.image_size)
        self.fast = bool(fast) and self.device.type == "cuda"
        self.encoder_calls = 0
        self._image = SAM2ImagePredictor(model)
        side = self.image_size
        self._image._bb_feat_sizes = [(side // 4, side // 4), (side // 8, side // 8), (side // 16, side // 16)]
        self._torch = torch

    @classmethod
    def from_loaded(cls, loaded, volume: np.ndarray, fast: bool = False, **kwargs) -> Sam2VolumePredictor:
        return cls(loaded.sam2, volume, model_id=loaded.model_id, fast=fast, **kwargs)

    @property
    def low_res_size(self) -> int:
        return self.image_size // 4

    get_slice = VolumePredictor.get_slice

    def get_embedding(self, axis: int, index: int) -> Sam2Embedding:
        return self.cache.get_or_compute(self._get_key(axis, index), lambda: self._compute_embedding(axis, index))

    def get_embeddings(self, axis: int, indexes: Sequence[int], batch_size: int = 8) -> List[Sam2Embedding]:
        """One slice per encoder call (SAM2's image predictor embeds one image at a time)."""
        return [self.get_embedding(axis, int(i)) for i in indexes]

    def _get_key(self, axis: int, index: int) -> tuple:
        return (self.volume_id, axis, index, self.model_id, self.window.key, ("sam2", self.fast))

    def _compute_embedding(self, axis: int, index: int) -> Sam2Embedding:
        image = self.window.apply(self.get_slice(axis, index))
        with self._get_autocast():
            self._image.set_image(image)
        self.encoder_calls += 1
        return Sam2Embedding(self._image._features, tuple(image.shape[:2]))

    def _get_autocast(self):
        import contextlib

        if not self.fast:
            return contextlib.nullcontext()
        return self._torch.autocast("cuda", dtype=self._torch.bfloat16)

    def predict(self, axis: int, index: int, prompts: Union[Prompts, Sequence[Prompts]],
                multimask: Optional[bool] = None) -> Prediction:
        """Masks for one or several objects on a slice (`VolumePredictor.predict`'s rules)."""
        objects: List[Prompts] = [prompts] if isinstance(prompts, Prompts) else list(prompts)
        if not objects:
            raise InputError("no objects to predict: give at least one Prompts")
        embedding = self.get_embedding(axis, index)
        predictor = self._image
        predictor._features, predictor._orig_hw = embedding.features, [embedding.original_size]
        predictor._is_image_set, predictor._is_batch = True, False
        h, w = embedding.original_size
        masks = np.zeros((len(objects), h, w), dtype=bool)
        logits = np.zeros((len(objects), self.low_res_size, self.low_res_size), dtype=np.float32)
        scores = np.zeros(len(objects), dtype=np.float32)
        for i, prompt in enumerate(objects):
            VolumePredictor._check_prompt(prompt, embedding.original_size)
            flag = VolumePredictor._use_multimask(prompt) if multimask is None else multimask
            points = np.asarray(prompt.points, np.float32).reshape(-1, 2)
            with self._get_autocast():
                out_masks, out_scores, out_logits = predictor.predict(
                    point_coords=points if len(points) else None,
                    point_labels=np.asarray(prompt.labels) if len(points) else None,
                    box=None if prompt.box is None else np.asarray(prompt.box, np.float32),
                    mask_input=self._get_mask_input(prompt), multimask_output=flag)
            best = int(np.argmax(out_scores))
            masks[i], logits[i], scores[i] = out_masks[best] > 0.5, out_logits[best], out_scores[best]
        return Prediction(masks, logits, scores)

    def predict_mask(self, axis: int, index: int, prompts: Prompts) -> np.ndarray:
        return self.predict(axis, index, prompts).masks[0]

    def _get_mask_input(self, prompt: Prompts) -> Optional[np.ndarray]:
        """Previous logits as they are; a binary mask squashed to SAM2's square low-res frame."""
        if prompt.logits is not None:
            return np.asarray(prompt.logits, np.float32)[None]
        if prompt.mask is None:
            return None
        import torch.nn.functional as F

        size = self.low_res_size
        mask = self._torch.as_tensor(np.asarray(prompt.mask, np.float32))[None, None]
        inside = (F.interpolate(mask, (size, size), mode="bilinear", align_corners=False)[0] > 0.5).numpy()
        value = float(np.log((1 - 1e-3) / 1e-3))
        return np.where(inside, value, -value).astype(np.float32)

    def propagate(self, axis: int, seeds: dict, config=None, progress: Optional[Callable[[int, int], None]] = None,
                  should_cancel: Optional[Callable[[], bool]] = None, lookahead: Optional[int] = None):
        """Propagate seed masks {slice index: 2D mask} along `axis` with SAM2's memory bank.

        Every seed is a mask prompt (an empty one tells SAM2 the object is absent there). One pass
        runs up from the lowest seed (through the gaps between seeds), one down from it; a side ends
        at its first empty mask, the range limits, or cancellation. `lookahead` is accepted for
        `VolumePredictor`'s signature; frames are prepared one at a time.
        """
        return _Propagation(self, axis, seeds, config, progress, should_cancel).run()

    def get_frames(self, axis: int) -> _Frames:
        return _Frames(self, axis)


class _Frames:
    """The slices of one axis as `SAM2VideoPredictor`'s frames, made when it indexes them."""

    def __init__(self, predictor: Sam2VolumePredictor, axis: int):
        self.predictor, self.axis = predictor, axis

    def __len__(self) -> int:
        return self.predictor.volume.shape[self.axis]

    def __getitem__(self, index: int):
        """As `sam2.utils.misc` loads and normalises a JPEG frame: PIL resize, /255, mean/std."""
        import torch
        from PIL import Image

        predictor = self.predictor
        rgb = predictor.window.apply(predictor.get_slice(self.axis, int(index)))
        size = predictor.image_size
        resized = np.array(Image.fromarray(rgb).resize((size, size))) / 255.0
        frame = torch.from_numpy(resized).permute(2, 0, 1).to(torch.float32)
        mean = torch.tensor(_IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
        std = torch.tensor(_IMAGENET_STD, dtype=torch.float32)[:, None, None]
        return (frame - mean) / std


def get_memory_window(model) -> int:
    """How many frames back SAM2 reads a non-conditioning frame's memory or object pointer (an upper bound)."""
    return max(model.num_maskmem * model.memory_temporal_stride_for_eval, model.max_obj_ptrs_in_encoder) + 1


def _forget_old_memory(state: dict, index: int, restart: int, window: int) -> None:
    """Drop the memory of frames no later frame will read, so a pass holds O(window) frames, not the volume.

    Kept: frames within `window` of the current one, and of `restart`, where the next pass (the other
    direction) starts and reads the frames this pass tracked next to it. The masks are identical to
    sam2's own predictor, which keeps every frame (Testing/test_sam2.py).
    """
    for output in state["output_dict_per_obj"].values():
        frames = output["non_cond_frame_outputs"]
        for old in [f for f in frames if abs(f - index) > window and abs(f - restart) > window]:
            del frames[old]


def _without_progress_bar(frames):
    """`propagate_in_video` without its tqdm bar: sam2 draws one per pass and has no switch, which would
    fill the Slicer console and interleave with `medicosam segment`'s own bar."""
    import sam2.sam2_video_predictor as video

    original, video.tqdm = video.tqdm, lambda iterable, *args, **kwargs: iterable
    try:
        yield from frames
    finally:
        video.tqdm = original


def init_video_state(model, frames, height: int, width: int) -> dict:
    """`SAM2VideoPredictor.init_state`'s inference state, on frames from memory (sam2 1.1.0's layout)."""
    device = model.device
    return {
        "images": frames, "num_frames": len(frames), "offload_video_to_cpu": False,
        "offload_state_to_cpu": False, "video_height": height, "video_width": width, "device": device,
        "storage_device": device, "point_inputs_per_obj": {}, "mask_inputs_per_obj": {}, "cached_features": {},
        "constants": {}, "obj_id_to_idx": OrderedDict(), "obj_idx_to_id": OrderedDict(), "obj_ids": [],
        "output_dict_per_obj": {}, "temp_output_dict_per_obj": {}, "frames_tracked_per_obj": {},
    }


class _Propagation:
    """One propagate call: the video state, the written masks, progress and the stop of each side."""

    def __init__(self, predictor: Sam2VolumePredictor, axis: int, seeds: dict, config, progress, should_cancel):
        from .propagation import PropagationConfig, _get_outward_ranges, _get_seeds

        self.predictor, self.axis = predictor, axis
        self.config = config or PropagationConfig()
        self.n_slices = predictor.volume.shape[axis]
        self.seeds = _get_seeds(seeds, self.n_slices)
        self.ranges = _get_outward_ranges(self.seeds, self.n_slices, self.config)
        self.progress, self.should_cancel = progress, should_cancel
        self.masks: Dict[int, np.ndarray] = {index: mask for index, mask in self.seeds.items() if mask.any()}
        self.done, self.cancelled = 0, False
        lowest, highest = min(self.seeds), max(self.seeds)
        self.total = highest - lowest + 1 - len(self.seeds)
        for side, (seed, last, _) in self.ranges.items():
            if self._wants(side) and self.seeds[seed].any():
                self.total += abs(last - seed)

    def _wants(self, side: str) -> bool:
        return self.config.direction in ("both", side)

    def run(self):
        from .propagation import PropagationResult

        predictor, model = self.predictor, self.predictor.model
        h, w = next(iter(self.seeds.values())).shape
        state = init_video_state(model, predictor.get_frames(self.axis), h, w)
        with predictor._get_autocast():
            for index, mask in self.seeds.items():
                model.add_new_mask(state, frame_idx=index, obj_id=1, mask=mask)
            self._report()
            lowest, highest = min(self.seeds), max(self.seeds)
            stops = {}
            for side, reverse in (("up", False), ("down", True)):
                seed, last, step = self.ranges[side]
                outward = self._wants(side) and self.seeds[seed].any()
                end = last if outward else (highest if side == "up" else lowest)
                stops[side] = self._track(state, lowest, end, reverse, seed, outward)
        self.total = self.done
        if not self.cancelled:
            self._report()
        return PropagationResult(self.masks, {s: at for s, (at, _) in stops.items()},
                                 {s: reason for s, (_, reason) in stops.items()}, self.cancelled)

    def _track(self, state, start: int, end: int, reverse: bool, seed: int, outward: bool):
        """Run one pass from `start` to `end`; (first slice not written, StopReason) of its side."""
        from .propagation import StopReason

        model, step = self.predictor.model, -1 if reverse else 1
        side = "down" if reverse else "up"
        reached, reason = start, None
        if abs(end - start) > 0 and not self.cancelled:
            frames = model.propagate_in_video(state, start_frame_idx=start, max_frame_num_to_track=abs(end - start),
                                              reverse=reverse)
            tracked = _without_progress_bar(frames)
            for index, _, logits in tracked:
                _forget_old_memory(state, index, start, get_memory_window(model))
                if index in self.seeds:
                    reached = index
                    continue
                if self.should_cancel is not None and self.should_cancel():
                    self.cancelled, reason = True, StopReason.CANCELLED
                    break
                mask = (logits[0, 0] > 0.0).cpu().numpy()
                self.done += 1
                self._report()
                beyond = (index - seed) * step > 0
                if beyond and not mask.any():
                    reason = StopReason.EMPTY
                    break
                if mask.any():
                    self.masks[index] = mask
                reached = index
            tracked.close()  # and `frames` with it
        if not self._wants(side):
            return seed, StopReason.NOT_REQUESTED
        if not self.seeds[seed].any():
            return seed, StopReason.STOP_SEED
        if reason is None and self.cancelled:
            reason = StopReason.CANCELLED
        if reason is not None:
            return reached + step, reason
        return self._get_end_reason(reached + step)

    def _get_end_reason(self, next_index: int):
        from .propagation import StopReason, _get_bounds

        if not 0 <= next_index < self.n_slices:
            return None, StopReason.BORDER
        first, last = _get_bounds(self.config, self.n_slices)
        return next_index, StopReason.MAX_SLICES if first <= next_index <= last else StopReason.RANGE_END

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total)
