"""One persistent thread for every model call, so a GUI thread never waits for inference.

Why one thread and not a pool: the model, its CUDA context and cuDNN's plan cache are used from a
single thread (cuDNN caches are per thread; a fresh thread per call pays the setup again), and a
`SegmentationSession` is not thread-safe, so running every call on one thread, in order, is what
keeps it consistent. Background jobs (embeddings of neighbouring slices) run only when no
foreground job waits and can be dropped when the user moves on.

The GUI thread submits callables and polls the returned `concurrent.futures.Future`s (Qt objects
must not be touched from the worker). `TaskProgress` carries progress and a cancel request between
the two threads.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from concurrent.futures import Future
from typing import Callable, Optional, Tuple

from ..errors import RunError

logger = logging.getLogger(__name__)

_FOREGROUND, _BACKGROUND, _STOP = 0, 1, 2


class TaskProgress:
    """Progress of a long job, written by the worker and read by the GUI; also its cancel switch.

    `report` has the signature of MedicoSAM's progress callbacks (`progress(done, total)`) and returns
    False once cancellation was requested, which also stops a download (see `models.download`).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._state: Tuple[int, Optional[int]] = (0, None)
        self._cancel = threading.Event()

    def report(self, done: int, total: Optional[int]) -> bool:
        with self._lock:
            self._state = (int(done), None if total is None else int(total))
        return not self._cancel.is_set()

    def get(self) -> Tuple[int, Optional[int]]:
        """(done, total or None) as last reported."""
        with self._lock:
            return self._state

    def cancel(self) -> None:
        self._cancel.set()

    def is_cancelled(self) -> bool:
        return self._cancel.is_set()


class InferenceWorker:
    """A daemon thread that runs submitted callables one at a time: foreground jobs in submission
    order, then background jobs when nothing else waits."""

    def __init__(self, name: str = "MedicoSAM inference"):
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._generation = 0  # background jobs of an older generation are dropped
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def submit(self, fn: Callable, *args, background: bool = False, **kwargs) -> Future:
        """Run `fn(*args, **kwargs)` on the worker; the future holds its result or exception."""
        future: Future = Future()
        with self._lock:
            if self._stopped:
                raise RunError("the inference worker was shut down: create a new one")
            priority = _BACKGROUND if background else _FOREGROUND
            self._queue.put((priority, next(self._order), self._generation, future, fn, args, kwargs))
        return future

    def clear_background(self) -> None:
        """Drop background jobs not started yet (their futures are cancelled)."""
        with self._lock:
            self._generation += 1

    def shutdown(self, wait: bool = True, timeout: Optional[float] = None) -> None:
        """Stop after the running job; jobs still queued are cancelled."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._queue.put((_STOP, next(self._order), 0, None, None, (), {}))
        if wait and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            priority, _, generation, future, fn, args, kwargs = self._queue.get()
            with self._lock:
                stale = priority == _BACKGROUND and generation != self._generation
                stopping = self._stopped
            if priority == _STOP:
                self._cancel_queued()
                return
            if stale or stopping or not future.set_running_or_notify_cancel():
                future.cancel()
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except Exception as error:  # handed to whoever waits on the future
                if priority == _BACKGROUND:
                    logger.debug("background job failed: %s", error)
                future.set_exception(error)

    def _cancel_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item[3] is not None:
                item[3].cancel()
