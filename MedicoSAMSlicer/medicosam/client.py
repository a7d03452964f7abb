"""The client of `medicosam serve`: `requests`, numpy and the standard library only.

The Slicer effect uses it before (or instead of) installing torch, and `medicosam segment --server`
uses it in place of a local model. `RemotePredictor` answers the calls `SegmentationSession` and
`segment_volume` make on a `VolumePredictor` (`volume`, `predict`, `predict_mask`, `propagate`,
`get_embedding`), so the rest of the code does not know where the model runs. The volume is
uploaded once per content digest; when the server forgot the session (restart, expiry) it is
opened again, re-uploading if needed, once per call.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Callable, Dict, Optional, Sequence, Union

import numpy as np

from .errors import Cancelled, InputError, RunError
from .predictor import Prediction
from .prompts import Prompts
from .wire import PROTOCOL, PROTOCOL_HEADER, encode_array, from_text, get_digest, prompts_to_json, to_text

logger = logging.getLogger(__name__)

#: Largest answer the client decodes (masks of one slice, a propagation's slice): a guard, not a limit.
MAX_ANSWER_BYTES = 2**31


class _SessionLost(Exception):
    """The server does not know the session (restarted or expired): open it again."""


class ServerClient:
    """One server (URL and token): requests with the token, answers checked, errors in words."""

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 30.0):
        import requests

        if not url.startswith(("http://", "https://")):
            raise InputError(f"server URL {url!r} must start with http:// or https://, e.g. http://gpu-host:8765")
        self.url, self.timeout = url.rstrip("/"), timeout
        self.http = requests.Session()
        self.http.headers[PROTOCOL_HEADER] = str(PROTOCOL)
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"
        self._model: Optional[dict] = None

    def request(self, method: str, path: str, *, stream: bool = False, timeout: Optional[float] = None, **kwargs):
        """The response of a successful request; InputError / RunError naming what went wrong."""
        import requests

        try:
            response = self.http.request(method, self.url + path, stream=stream,
                                         timeout=timeout or self.timeout, **kwargs)
        except requests.RequestException as error:
            raise RunError(f"cannot reach the MedicoSAM server at {self.url} ({type(error).__name__}): check the "
                           "URL, the network, and that `medicosam serve` runs there") from None
        if response.status_code < 400:
            return response
        try:
            answer = response.json()
        except ValueError:
            answer = {"detail": response.text[:200]}
        detail, code = str(answer.get("detail", "")), answer.get("code", "")
        if code == "unknown_session":
            raise _SessionLost(detail)
        if response.status_code == 401:
            raise InputError(f"the server at {self.url} refused the token: {detail} (set the token `medicosam "
                             "serve` was started with)")
        if response.status_code == 413:
            raise InputError(f"the server at {self.url} refused a request as too large: {detail}")
        if response.status_code < 500:
            raise InputError(f"the server at {self.url} refused the request: {detail}")
        raise RunError(f"the server at {self.url} failed ({response.status_code}): {detail}")

    def get_health(self) -> dict:
        health = self.request("GET", "/v1/health").json()
        if health.get("protocol") != PROTOCOL:
            raise InputError(f"the server at {self.url} speaks protocol {health.get('protocol')}, this client "
                             f"{PROTOCOL}: install the same MedicoSAM version on both sides")
        return health

    def get_model(self) -> dict:
        """What the server runs (name, architecture, hash, image_size, device); checks protocol and token."""
        if self._model is None:
            self.get_health()
            self._model = self.request("GET", "/v1/models").json()
        return self._model

    def describe(self) -> str:
        """One line for "Test connection": the model and device of the server, or an error raised."""
        model = self.get_model()
        return (f"Connected to {self.url}: {model['name']} ({model['architecture']}, {model['hash']}) on "
                f"{model['device']}")

    def upload(self, volume: np.ndarray, digest: Optional[str] = None) -> str:
        """Upload `volume` unless the server already holds it for this token; returns its digest."""
        digest = digest or get_digest(volume)
        if not self._has_volume(digest):
            self.request("PUT", f"/v1/volumes/{digest}", data=encode_array(volume), timeout=max(self.timeout, 600.0),
                         headers={"Content-Type": "application/octet-stream"})
        return digest

    def _has_volume(self, digest: str) -> bool:
        import requests

        try:
            response = self.http.head(self.url + f"/v1/volumes/{digest}", timeout=self.timeout)
        except requests.RequestException:
            return False  # the upload's request reports it
        if response.status_code == 401:
            self.request("GET", "/v1/models")  # raises the token error with its message
        return response.status_code == 200


class RemotePredictor:
    """A `VolumePredictor` whose model runs on a server: same calls, same masks.

    Args:
        client: the server.
        volume: the (K, J, I) array (or colour (K, J, I, 3)); kept here for re-uploads.
        window: intensity preset (`medicosam.normalization.PRESETS`), computed on the server.
        fast: the fast path (see `medicosam.predictor.get_speed_options`).
    """

    def __init__(self, client: ServerClient, volume: np.ndarray, window: str = "auto", fast: bool = True):
        volume = np.asarray(volume)
        self.volume = volume[None] if volume.ndim == 2 else volume
        self.client, self.window, self.fast = client, window, fast
        self.digest = get_digest(self.volume)
        self.low_res_size = int(client.get_model()["low_res_size"])
        self.session: Optional[str] = None

    def _open(self) -> str:
        self.client.upload(self.volume, self.digest)
        answer = self.client.request("POST", "/v1/sessions", json={"volume": self.digest, "window": self.window,
                                                                    "fast": self.fast})
        self.session = answer.json()["session"]
        return self.session

    def _call(self, call: Callable[[str], object]):
        """`call(session_id)`, opening the session first, and once more if the server forgot it."""
        try:
            return call(self.session or self._open())
        except _SessionLost:
            logger.info("the server forgot session %s (restart or expiry): opening it again", self.session)
            return call(self._open())

    def close(self) -> None:
        if self.session is not None:
            with contextlib.suppress(InputError, RunError, _SessionLost):
                self.client.request("DELETE", f"/v1/sessions/{self.session}")
            self.session = None

    def get_embedding(self, axis: int, index: int) -> None:
        """Have the server embed a slice ahead of use (prefetch); the embedding stays there."""
        self._call(lambda s: self.client.request("POST", f"/v1/sessions/{s}/embed",
                                                 json={"axis": int(axis), "indexes": [int(index)]}))

    def predict(self, axis: int, index: int, prompts: Union[Prompts, Sequence[Prompts]],
                multimask: Optional[bool] = None) -> Prediction:
        objects = [prompts] if isinstance(prompts, Prompts) else list(prompts)
        if not objects:
            raise InputError("no objects to predict: give at least one Prompts")
        body = {"axis": int(axis), "index": int(index), "objects": [prompts_to_json(p) for p in objects],
                "multimask": multimask}
        answer = self._call(lambda s: self.client.request("POST", f"/v1/sessions/{s}/predict", json=body)).json()
        return Prediction(from_text(answer["masks"], MAX_ANSWER_BYTES), from_text(answer["logits"], MAX_ANSWER_BYTES),
                          np.asarray(answer["scores"], dtype=np.float32))

    def predict_mask(self, axis: int, index: int, prompts: Prompts) -> np.ndarray:
        return self.predict(axis, index, prompts).masks[0]

    def propagate(self, axis: int, seeds: dict, config=None, progress: Optional[Callable[[int, int], None]] = None,
                  should_cancel: Optional[Callable[[], bool]] = None, lookahead: Optional[int] = None):
        """`VolumePredictor.propagate` on the server, streamed: progress as slices arrive; `should_cancel`
        asks the server to stop, and the result holds the slices it had accepted (`cancelled` True).

        A server that stops answering part-way gives RunError and nothing of this run: only a complete
        (or cancelled) run says which of the slices that arrived were accepted.
        """
        import dataclasses

        from .propagation import PropagationConfig, PropagationResult, StopReason

        config = config or PropagationConfig()
        body = {"axis": int(axis), "seeds": {str(int(k)): to_text(np.asarray(v, bool)) for k, v in seeds.items()},
                "config": dataclasses.asdict(config), "lookahead": lookahead}
        response = self._call(lambda s: self.client.request("POST", f"/v1/sessions/{s}/propagate", json=body,
                                                            stream=True, timeout=(self.client.timeout, 600.0)))
        arrived: Dict[int, np.ndarray] = {}
        asked_to_stop = False
        try:
            for line in response.iter_lines():
                if not line:
                    continue
                event = json.loads(line)
                kind = event.get("event")
                if kind == "slice":
                    arrived[int(event["index"])] = from_text(event["mask"], MAX_ANSWER_BYTES)
                elif kind == "progress" and progress is not None:
                    progress(int(event["done"]), int(event["total"]))
                elif kind == "error":
                    raise (InputError if event.get("status", 500) < 500 else RunError)(
                        f"the server could not propagate: {event['detail']}")
                elif kind == "done":
                    seeded = {int(k): np.asarray(v, bool) for k, v in seeds.items()}
                    masks = {i: arrived[i] if i in arrived else seeded[i] for i in event["accepted"]}
                    return PropagationResult(masks, event["stopped_at"],
                                             {k: StopReason(v) for k, v in event["reasons"].items()},
                                             bool(event["cancelled"]))
                if not asked_to_stop and should_cancel is not None and should_cancel():
                    asked_to_stop = True
                    self.client.request("POST", f"/v1/sessions/{self.session}/cancel")
        except (OSError, ValueError) as error:  # requests' stream errors are OSErrors (ChunkedEncodingError...)
            raise RunError(f"the server at {self.client.url} stopped answering during propagation after "
                           f"{len(arrived)} slices ({type(error).__name__}): nothing of this propagation was "
                           "kept; run it again once the server is back") from None
        finally:
            response.close()
        if asked_to_stop:
            raise Cancelled("propagation was cancelled before the server confirmed any slice")
        raise RunError(f"the server at {self.client.url} ended the propagation stream without a result: nothing "
                       "of this propagation was kept; run it again")
