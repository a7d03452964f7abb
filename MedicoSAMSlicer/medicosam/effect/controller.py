"""What the effect keeps alive and when it drops it: model, embedding cache, predictor, sessions.

The Slicer file reads widgets and MRML and calls this controller, so the rules live where pytest runs
them with a real SAM:

- the model is loaded for a (checkpoint, device); a change of "Fast" alone keeps it (the predictor
  sets the speed, the cache keys hold the precision) but drops the predictor and sessions made with
  the old speed;
- one embedding cache per loaded model; a new cache size applies to it in place (a smaller cap evicts
  at the next embedding);
- one source volume at a time: a new `volume_key` (other contents or grid) replaces the predictor and
  drops the sessions of the old volume;
- one session per segment of that volume;
- "Run on: server" replaces the model by a `RemoteModel` (a connection to `medicosam serve`) and the
  predictor by a `medicosam.client.RemotePredictor`, which answers the same calls: sessions,
  prefetch and propagation do not know where the model runs, and nothing here imports torch.

Threads: the controller is called from the GUI thread. Its slow steps (loading a model, the
intensity window of a new volume) go through `run(function, text, progress)`, which the effect runs
on the inference worker behind a progress dialog; sessions are used on that worker only.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import Future
from typing import Callable, Dict, Hashable, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from .worker import InferenceWorker, TaskProgress

#: `run(function, text, progress)`: `function()`'s result, computed on the worker (`progress` lets the
#: user follow and cancel it); the effect shows `text` in its progress dialog meanwhile.
Run = Callable[[Callable[[], object], str, Optional[TaskProgress]], object]


class EffectController:
    """The effect's model, predictor and sessions.

    Args:
        run: how slow steps run (see `Run`).
        on_forget: called whenever the sessions are dropped (the effect clears the preview they showed).
    """

    def __init__(self, run: Run, on_forget: Callable[[], None] = lambda: None):
        self.run = run
        self.on_forget = on_forget
        self.worker: Optional[InferenceWorker] = None
        self.loaded = None  # medicosam.models.checkpoint.LoadedSam / LoadedSam2, or a RemoteModel
        self.model_key: Optional[tuple] = None  # `get_model_key` of `loaded`
        self.fast = False  # the speed the predictor runs at
        self.cache = None  # medicosam.embedding_cache.EmbeddingCache of `loaded`
        self.volume_key: Optional[Hashable] = None
        self.predictor = None  # medicosam.predictor.VolumePredictor on the volume of `volume_key`
        self.sessions: Dict[Hashable, object] = {}  # segment key -> SegmentationSession

    def get_worker(self) -> InferenceWorker:
        """The one inference thread, started on first use."""
        if self.worker is None:
            self.worker = InferenceWorker()
        return self.worker

    # Model ---------------------------------------------------------------------------------------

    def use_settings(self, settings) -> bool:
        """Apply `EffectSettings` to what is loaded: True when the loaded model serves them, False when
        `load_model` must run (after the effect had the packages installed and the download agreed)."""
        if self.cache is not None:
            self.cache.max_bytes = settings.cache_bytes
        if self.loaded is None or self.model_key != get_model_key(settings):
            return False
        if settings.fast != self.fast:
            self.fast = settings.fast
            self.forget()
        return True

    def load_model(self, settings) -> str:
        """Load the model `settings` ask for, with a new embedding cache, or connect to the server they
        name; returns the line the effect shows. Cancel in the progress dialog stops a download."""
        if settings.server.remote:
            server = settings.server
            loaded = self.run(lambda: RemoteModel.connect(server.get_url(), server.token),
                              f"Connecting to {server.url}...", None)
            self.loaded, self.model_key, self.fast, self.cache = loaded, get_model_key(settings), settings.fast, None
            self.forget()
            return loaded.description
        from ..embedding_cache import EmbeddingCache

        progress = TaskProgress()
        loaded = self.run(lambda: _load_model(settings, progress), f"Loading {settings.model}...", progress)
        self.loaded, self.model_key, self.fast = loaded, get_model_key(settings), settings.fast
        self.cache = EmbeddingCache(settings.cache_bytes)
        self.forget()
        return f"Model {settings.model} ready on {get_model_device(loaded)}."

    # Volume and sessions -------------------------------------------------------------------------

    def get_session(self, segment_key: Hashable, volume_key: Hashable, ijk_to_ras: np.ndarray,
                    read_volume: Callable[[], np.ndarray], refine: bool, create: bool = True):
        """The `SegmentationSession` of a segment of the volume `volume_key`; None when no model is
        loaded, or when the segment has none and `create` is False.

        `read_volume()` returns the volume's (K, J, I) array, read only for a new volume (its
        predictor computes the intensity window from all of it, on the worker). `ijk_to_ras` is
        updated on every call: the segmentation may have been moved.
        """
        from .session import SegmentationSession

        if self.loaded is None:
            return None
        if volume_key != self.volume_key or segment_key not in self.sessions:
            if not create:
                return None
            if volume_key != self.volume_key:
                self._set_volume(volume_key, read_volume())
            self.sessions[segment_key] = SegmentationSession(self.predictor, ijk_to_ras, refine=refine)
        session = self.sessions[segment_key]
        session.ijk_to_ras = np.asarray(ijk_to_ras, float)
        return session

    def forget_segment(self, segment_key: Hashable) -> None:
        """Drop one segment's session (its prompts were all deleted: "Reset prompts"); the volume stays."""
        self.sessions.pop(segment_key, None)

    def forget(self) -> None:
        """Drop the predictor and every session (the volume, its grid or the speed changed)."""
        self._drop_volume()
        self.on_forget()

    def check_request(self, request, shape_kji: Sequence[int]) -> None:
        """Refuse to write a `WriteRequest` onto a grid other than the one it was predicted on: the
        segmentation's geometry changed, so the sessions (prompts on the old grid) are dropped too."""
        if tuple(shape_kji) != tuple(request.shape):
            self.forget()
            raise InputError("The segmentation's geometry changed since the prompts were placed: nothing was "
                             "written. Place the prompts again.")

    def release(self) -> None:
        """Stop the worker; free the model, the volume copy and the embeddings (the effect goes away)."""
        if self.worker is not None:
            self.worker.shutdown(wait=False)
            self.worker = None
        self.loaded = self.model_key = self.cache = None
        self._drop_volume()

    # Work on the worker --------------------------------------------------------------------------

    def submit_markups(self, session, markups, view_normal_ras: Sequence[float], refine: bool) -> Future:
        """Hand a segment's markups (`markups.Markups`) to its session on the worker. The future's result
        is None when the current slice did not change (its preview holds), else (its new preview, or
        None when no prompt is left on it; the slices to `prefetch`)."""

        def job():
            session.refine = refine
            changed = session.set_markups(markups, view_normal_ras)
            if session.current not in changed:
                return None
            preview = session.update_preview() if session.has_prompts() else None
            return preview, session.get_prefetch_slices()

        return self.get_worker().submit(job)

    def prefetch(self, session, keys: Sequence[Tuple[int, int]]) -> None:
        """Embed the (axis, index) slices in the background while the user looks at a preview; the
        prefetches of an earlier preview that did not start are dropped (the user moved on)."""
        self.stop_prefetch()
        for axis, index in keys:
            self.get_worker().submit(session.predictor.get_embedding, axis, index, background=True)

    def stop_prefetch(self) -> None:
        if self.worker is not None:
            self.worker.clear_background()

    def _set_volume(self, volume_key: Hashable, volume: np.ndarray) -> None:
        loaded, cache, fast = self.loaded, self.cache, self.fast
        if isinstance(loaded, RemoteModel):
            predictor = self.run(lambda: loaded.get_predictor(volume, fast), "Uploading the volume to the server...",
                                 None)
        else:
            from ..predictor import get_volume_predictor

            predictor = self.run(lambda: get_volume_predictor(loaded, volume, fast=fast,
                                                              volume_id=repr(volume_key), cache=cache),
                                 "Preparing the volume...", None)
        self.volume_key, self.predictor, self.sessions = volume_key, predictor, {}

    def _drop_volume(self) -> None:
        self.volume_key, self.predictor, self.sessions = None, None, {}


@dataclasses.dataclass
class RemoteModel:
    """What `medicosam serve` runs, in place of a loaded model ("Run on: server")."""

    client: object  # medicosam.client.ServerClient
    description: str  # `ServerClient.describe()`: model name, architecture, hash, device
    family = "remote"

    @classmethod
    def connect(cls, url: str, token: str) -> RemoteModel:
        """Reach the server and check its protocol and the token (errors name what is wrong)."""
        from ..client import ServerClient

        client = ServerClient(url, token or None)
        return cls(client, client.describe())

    def get_predictor(self, volume: np.ndarray, fast: bool):
        """A `RemotePredictor` on `volume`, uploaded now (once per content: the server may hold it)."""
        from ..client import RemotePredictor

        predictor = RemotePredictor(self.client, volume, fast=fast)
        self.client.upload(predictor.volume, predictor.digest)
        return predictor


def get_model_key(settings) -> tuple:
    """What identifies the loaded model: the server and token, or the checkpoint and device."""
    if settings.server.remote:
        return ("server", settings.server.url, settings.server.token)
    return (settings.checkpoint, settings.device)


def get_model_device(loaded) -> str:
    """The device a loaded model is on."""
    return str(next(loaded.model.parameters()).device)


def get_propagation_config(session, settings, rois: Sequence, view_normal_ras: Sequence[float],
                           direction: Optional[str] = None):
    """The settings' `PropagationConfig`, kept inside the ROI when it spans several slices along
    the propagation axis (the current slice's, else the view's); `direction` ("down", "both", "up":
    a propagation button) overrides the settings' one for this click."""
    from ..geometry import get_slice_axis
    from ..markups import get_propagation_range

    config = settings.propagation if direction is None else dataclasses.replace(settings.propagation,
                                                                                direction=direction)
    axis = session.current[0] if session.current else get_slice_axis(view_normal_ras, session.ijk_to_ras)
    slice_range = get_propagation_range(rois, session.ijk_to_ras, session.shape, axis)
    if slice_range is None:
        return config
    return dataclasses.replace(config, slice_range=slice_range)


def _load_model(settings, progress: TaskProgress):
    """The `LoadedSam` / `LoadedSam2` of `settings` (runs on the worker)."""
    from ..device import configure_threads, get_device
    from ..models.checkpoint import load_sam
    from .requirements import check_family_supported
    from .settings import CUSTOM_MODEL

    check_family_supported(settings.family)
    configure_threads()  # Slicer in a container would otherwise run one torch thread per host core
    return load_sam(settings.checkpoint, device=str(get_device(settings.device)),
                    allow_custom=settings.model == CUSTOM_MODEL, progress=progress.report)
