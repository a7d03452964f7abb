"""What the server holds: one model, one capped embedding cache for every session, uploads, sessions.

Uploads are kept per (owner, digest): a digest alone never reaches another token's volume. Session
ids are `secrets.token_urlsafe`, unguessable, and checked against the owner too. Model calls take
one lock: the fast path switches attention classes on the shared model per call
(`medicosam.acceleration.fast_attention`), so two calls must not overlap; one process per GPU is the
unit of scale (docs/server.md).
"""

from __future__ import annotations

import functools
import secrets
import threading
import time
from typing import Dict, Optional, Tuple

import numpy as np

from ..embedding_cache import EmbeddingCache
from ..errors import InputError


class SessionNotFound(LookupError):
    """The session id is unknown (expired, another owner's, or the server restarted)."""


class ServerFull(RuntimeError):
    """An upload does not fit under the volume caps, and every volume held belongs to an open session."""


class _Locking:
    """Mixed into a family's engine: its model calls hold the server's model lock (one call at a time),
    and each slice a slice-by-slice propagation predicts goes to `on_slice` (streamed as it comes)."""

    model_lock: threading.RLock
    on_slice = None  # called with (index, mask)

    def predict_mask(self, axis: int, index: int, prompts):
        mask = super().predict_mask(axis, index, prompts)
        if self.on_slice is not None:
            self.on_slice(index, mask)
        return mask

    def predict(self, *args, **kwargs):
        with self.model_lock:
            return super().predict(*args, **kwargs)

    def get_embeddings(self, *args, **kwargs):
        with self.model_lock:
            return super().get_embeddings(*args, **kwargs)

    def get_embedding(self, *args, **kwargs):
        with self.model_lock:
            return super().get_embedding(*args, **kwargs)


@functools.cache
def get_locked_engine(engine: type) -> type:
    """The server's version of a family's engine class (`ModelFamily.get_engine`)."""
    return type(f"Locked{engine.__name__}", (_Locking, engine), {})


class Session:
    def __init__(self, owner: str, digest: str, predictor):
        self.owner, self.digest, self.predictor = owner, digest, predictor
        self.cancel = threading.Event()
        self.used = time.monotonic()


class ServerState:
    """The model (any family's), the cache, the uploads and the sessions of one server process."""

    def __init__(self, loaded, config):
        self.loaded, self.config = loaded, config
        self.cache = EmbeddingCache(config.cache_mb * 2**20)
        self.model_lock = threading.RLock()
        self._lock = threading.Lock()
        self._volumes: Dict[Tuple[str, str], list] = {}  # (owner, digest) -> [array, last use]
        self._sessions: Dict[str, Session] = {}
        self.ttl = config.session_minutes * 60.0

    def has_volume(self, owner: str, digest: str) -> bool:
        self.expire()
        with self._lock:
            entry = self._volumes.get((owner, digest))
            if entry is not None:
                entry[1] = time.monotonic()
            return entry is not None

    def add_volume(self, owner: str, digest: str, array: np.ndarray) -> None:
        """Keep an upload, first dropping the least recently used uploads no session holds while the
        count or the memory would pass `--max-volumes` / `--volumes-mb`; ServerFull when that is not enough."""
        self.expire()
        max_bytes, max_count = self.config.volumes_mb * 2**20, self.config.max_volumes
        with self._lock:
            if (owner, digest) in self._volumes:  # the same content again
                self._volumes[(owner, digest)][1] = time.monotonic()
                return
            used = {(s.owner, s.digest) for s in self._sessions.values()}
            pinned = [volume.nbytes for key, (volume, _) in self._volumes.items() if key in used]
            if len(pinned) >= max_count or sum(pinned) + array.nbytes > max_bytes:  # refused: nothing dropped
                raise ServerFull(f"the server holds {len(pinned)} volumes ({sum(pinned) / 2**20:.1f} MB) that open "
                                 f"sessions use, and this one ({array.nbytes / 2**20:.1f} MB) would pass its limits "
                                 f"(--max-volumes {max_count}, --volumes-mb {self.config.volumes_mb}): close "
                                 "sessions or try again when they expire")
            idle = sorted((last, key) for key, (_, last) in self._volumes.items() if key not in used)
            total = sum(volume.nbytes for volume, _ in self._volumes.values())
            while len(self._volumes) >= max_count or total + array.nbytes > max_bytes:
                total -= self._volumes.pop(idle.pop(0)[1])[0].nbytes
            self._volumes[(owner, digest)] = [array, time.monotonic()]

    def open_session(self, owner: str, digest: str, window: str, fast: bool) -> str:
        from ..normalization import get_intensity_window

        self.expire()
        with self._lock:
            entry = self._volumes.get((owner, digest))
        if entry is None:
            raise SessionNotFound(f"no upload {digest[:12]}... for this token: upload the volume first")
        if fast and not self.config.fast:
            raise InputError("this server runs the official fp32 path only (--no-fast): ask for fast = false")
        volume = entry[0]
        engine = get_locked_engine(self.loaded.family.get_engine())
        predictor = engine.from_loaded(self.loaded, volume, fast=fast, window=get_intensity_window(volume, window),
                                       volume_id=digest, cache=self.cache)
        predictor.model_lock = self.model_lock
        session_id = secrets.token_urlsafe(24)
        with self._lock:
            self._sessions[session_id] = Session(owner, digest, predictor)
        return session_id

    def get_session(self, owner: str, session_id: str) -> Session:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or session.owner != owner:
                raise SessionNotFound("unknown session: it expired or the server restarted; open a new one")
            session.used = time.monotonic()
            self._volumes[(owner, session.digest)][1] = session.used
            return session

    def close_session(self, owner: str, session_id: str) -> None:
        """Close this owner's session; SessionNotFound for an unknown one or another token's."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or session.owner != owner:
                raise SessionNotFound("unknown session: it expired, was closed, or belongs to another token")
            del self._sessions[session_id]

    def expire(self, now: Optional[float] = None) -> None:
        """Drop idle sessions, then idle uploads no session uses, and the embeddings of volumes gone."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for session_id in [s for s, session in self._sessions.items() if now - session.used > self.ttl]:
                del self._sessions[session_id]
            used = {(s.owner, s.digest) for s in self._sessions.values()}
            for key in [k for k, (_, last) in self._volumes.items() if k not in used and now - last > self.ttl]:
                del self._volumes[key]
            kept = {digest for _, digest in self._volumes}
        self.cache.clear(lambda key: key[0] not in kept)

    def expire_regularly(self) -> threading.Event:
        """Run `expire` on a timer (every half session time, at most a minute), not only when someone
        uploads or opens a session; set the returned event to stop it."""
        stop = threading.Event()

        def run():
            while not stop.wait(min(self.ttl / 2, 60.0)):
                self.expire()

        threading.Thread(target=run, daemon=True, name="medicosam-expire").start()
        return stop

    def get_counts(self) -> dict:
        with self._lock:
            return {"sessions": len(self._sessions), "volumes": len(self._volumes),
                    "cache_bytes": self.cache.nbytes, "cache_max_bytes": self.cache.max_bytes}
