"""The FastAPI app of `medicosam serve` (protocol `/v1`, OpenAPI at `/docs` and `/openapi.json`).

Endpoints (every one but `/v1/health` needs `Authorization: Bearer TOKEN` when the server has tokens):
- `GET /v1/health`: status and protocol version;
- `GET /v1/models`: the model served (name, architecture, hash);
- `HEAD|PUT /v1/volumes/{digest}`: "already have it?" / upload once (`medicosam.wire.encode_array`);
- `POST /v1/sessions`: a session on an uploaded volume (intensity window, speed);
- `POST /v1/sessions/{id}/predict`, `/embed`, `/propagate` (NDJSON stream), `/cancel`; `DELETE`.
Bad requests get 4xx with `{"detail": message}`; a lost session 404 with `"code": "unknown_session"`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import threading
from typing import Optional

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect

from .. import __version__
from ..errors import MedicoSAMError
from ..wire import (
    PROTOCOL,
    PROTOCOL_HEADER,
    VOLUME_DTYPES,
    Budget,
    decode_array,
    from_text,
    get_digest,
    prompts_from_json,
    to_text,
)
from .state import ServerFull, ServerState, SessionNotFound

logger = logging.getLogger(__name__)


class _Refused(Exception):
    def __init__(self, status: int, detail: str, code: str = ""):
        super().__init__(detail)
        self.status, self.detail, self.code = status, detail, code


def create_app(state: ServerState) -> FastAPI:
    config = state.config
    max_body = config.max_upload_mb * 2**20
    max_volume = config.max_volume_mb * 2**20

    @contextlib.asynccontextmanager
    async def lifespan(_):
        stop = state.expire_regularly()
        yield
        stop.set()

    app = FastAPI(title="MedicoSAM server", version=__version__, lifespan=lifespan,
                  description="SAM for medical volumes, one model for many annotators (docs/server.md)")

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """Token, protocol version and body size, before any handler runs."""
        if request.url.path.startswith("/v1/") and request.url.path != "/v1/health":
            owner = config.get_owner(request.headers.get("authorization"))
            if owner is None:
                return _error(401, "missing or wrong token: send 'Authorization: Bearer TOKEN' with the "
                                   "server's token", "token")
            request.state.owner = owner
            version = request.headers.get(PROTOCOL_HEADER)
            if version is not None and version != str(PROTOCOL):
                return _error(400, f"this server speaks protocol {PROTOCOL}, the client {version}: install "
                                   "the same MedicoSAM version on both sides", "protocol")
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > max_body:
                return _error(413, f"request of {int(length) / 2**20:.0f} MB is over the server's limit of "
                                   f"{config.max_upload_mb} MB (medicosam serve --max-upload-mb)", "too_large")
        try:
            return await call_next(request)
        except _Refused as refused:
            return _error(refused.status, refused.detail, refused.code)

    @app.exception_handler(_Refused)
    async def refused(_, error: _Refused):
        return _error(error.status, error.detail, error.code)

    @app.exception_handler(SessionNotFound)
    async def lost(_, error: SessionNotFound):
        return _error(404, str(error), "unknown_session")

    @app.exception_handler(ServerFull)
    async def full(_, error: ServerFull):
        return _error(503, str(error), "server_full")

    @app.exception_handler(MedicoSAMError)
    async def invalid(_, error: MedicoSAMError):
        return _error(400, str(error), "invalid")

    @app.get("/v1/health")
    def health():
        return {"status": "ok", "protocol": PROTOCOL, "version": __version__}

    @app.get("/v1/models")
    def models():
        loaded = state.loaded
        return {"name": os.path.basename(str(loaded.source)), "architecture": loaded.config.arch,
                "family": loaded.family.name, "hash": loaded.model_id, "image_size": loaded.config.image_size,
                "low_res_size": loaded.low_res_size, "device": str(next(loaded.model.parameters()).device),
                "fast": config.fast,
                "protocol": PROTOCOL, **state.get_counts()}

    @app.head("/v1/volumes/{digest}")
    def has_volume(digest: str, request: Request):
        return Response(status_code=200 if state.has_volume(request.state.owner, digest) else 404)

    @app.put("/v1/volumes/{digest}", status_code=201)
    async def put_volume(digest: str, request: Request):
        body = await _read_body(request, max_body, config.max_upload_mb)
        array = await run_in_threadpool(decode_array, body, max_volume, VOLUME_DTYPES, "volume")
        if not (array.ndim == 3 or (array.ndim == 4 and array.shape[-1] == 3 and array.dtype == np.uint8)):
            raise _Refused(400, f"volume of shape {array.shape}: send (K, J, I) or (K, J, I, 3) uint8", "invalid")
        if min(array.shape[:3]) < 1:
            raise _Refused(400, f"volume of shape {array.shape} is empty", "invalid")
        if await run_in_threadpool(get_digest, array) != digest:
            raise _Refused(400, "the volume's content does not match its digest (medicosam.wire.get_digest): "
                                "upload it again", "digest")
        state.add_volume(request.state.owner, digest, array)
        return {"digest": digest, "shape": list(array.shape), "dtype": array.dtype.name}

    @app.post("/v1/sessions")
    async def open_session(request: Request):
        body = await _read_json(request, max_body, config.max_upload_mb)
        digest, window, fast = body.get("volume"), body.get("window", "auto"), bool(body.get("fast", True))
        if not isinstance(digest, str) or not isinstance(window, str):
            raise _Refused(400, "a session needs {'volume': digest, 'window': preset, 'fast': bool}", "invalid")
        session_id = await run_in_threadpool(state.open_session, request.state.owner, digest, window, fast)
        return {"session": session_id}

    @app.delete("/v1/sessions/{session_id}")
    def close_session(session_id: str, request: Request):
        state.close_session(request.state.owner, session_id)
        return {"closed": session_id}

    @app.post("/v1/sessions/{session_id}/predict")
    async def predict(session_id: str, request: Request):
        session = state.get_session(request.state.owner, session_id)
        body = await _read_json(request, max_body, config.max_upload_mb)
        axis, index = _get_slice(body, session.predictor.volume)
        objects = body.get("objects")
        if not isinstance(objects, list) or not objects:
            raise _Refused(400, "'objects' must be a non-empty list of prompts", "invalid")
        budget, low = Budget(config.max_request_mb * 2**20), session.predictor.low_res_size
        prompts = [prompts_from_json(value, budget, _get_slice_shape(session.predictor.volume, axis), (low, low))
                   for value in objects]
        multimask = body.get("multimask")
        prediction = await run_in_threadpool(session.predictor.predict, axis, index, prompts,
                                             None if multimask is None else bool(multimask))
        return {"masks": to_text(prediction.masks), "logits": to_text(prediction.logits),
                "scores": prediction.scores.tolist()}

    @app.post("/v1/sessions/{session_id}/embed")
    async def embed(session_id: str, request: Request):
        """Compute slice embeddings ahead (the effect's prefetch while the user looks at a preview)."""
        session = state.get_session(request.state.owner, session_id)
        body = await _read_json(request, max_body, config.max_upload_mb)
        axis, _ = _get_slice({**body, "index": 0}, session.predictor.volume)
        indexes = body.get("indexes")
        if not isinstance(indexes, list) or not all(isinstance(i, int) for i in indexes):
            raise _Refused(400, "'indexes' must be a list of slice numbers", "invalid")
        for index in indexes:
            session.predictor.get_slice(axis, index)  # InputError for a slice outside the volume
        await run_in_threadpool(session.predictor.get_embeddings, axis, indexes)
        return {"embedded": indexes}

    @app.post("/v1/sessions/{session_id}/cancel")
    def cancel(session_id: str, request: Request):
        state.get_session(request.state.owner, session_id).cancel.set()
        return {"cancelled": True}

    @app.post("/v1/sessions/{session_id}/propagate")
    async def propagate(session_id: str, request: Request):
        """NDJSON lines: `progress` (done, total), `slice` (index, mask) as computed, then `done`
        (the accepted slices, stops, cancelled) or `error`."""
        from ..propagation import PropagationConfig

        session = state.get_session(request.state.owner, session_id)
        body = await _read_json(request, max_body, config.max_upload_mb)
        axis, _ = _get_slice({**body, "index": 0}, session.predictor.volume)
        seeds_json, options = body.get("seeds"), body.get("config") or {}
        if not isinstance(seeds_json, dict) or not seeds_json or not isinstance(options, dict):
            raise _Refused(400, "propagate needs {'axis', 'seeds': {slice: mask}, 'config': {...}}", "invalid")
        budget, shape = Budget(config.max_request_mb * 2**20), _get_slice_shape(session.predictor.volume, axis)
        try:
            seeds = {_get_slice({"axis": axis, "index": int(k)}, session.predictor.volume)[1]:
                     from_text(v, budget.max_bytes, ("bool",), f"seed {k}", shape, budget)
                     for k, v in seeds_json.items()}
            if options.get("slice_range") is not None:
                options["slice_range"] = tuple(options["slice_range"])
            propagation = PropagationConfig(**options)
        except (TypeError, ValueError) as error:
            raise _Refused(400, f"bad propagation request: {error}", "invalid") from None
        return StreamingResponse(_stream(session, axis, seeds, propagation, body.get("lookahead")),
                                 media_type="application/x-ndjson")

    return app


async def _stream(session, axis: int, seeds: dict, config, lookahead: Optional[int]):
    """Run the propagation on a thread; yield its events as they come. A client that goes away or
    calls /cancel stops it at the next slice."""
    events: queue.Queue = queue.Queue()
    predictor = session.predictor
    session.cancel.clear()
    streamed: set = set()

    def run():
        try:
            def on_slice(index, mask):
                streamed.add(index)
                events.put({"event": "slice", "index": index, "mask": to_text(mask)})

            predictor.on_slice = on_slice
            result = predictor.propagate(axis, seeds, config, progress=lambda d, t: events.put(
                {"event": "progress", "done": d, "total": t}), should_cancel=session.cancel.is_set,
                lookahead=lookahead)
            for index in sorted(set(result.masks) - streamed):  # engines that track a video return them at the end
                events.put({"event": "slice", "index": index, "mask": to_text(result.masks[index])})
            events.put({"event": "done", "accepted": sorted(result.masks), "cancelled": result.cancelled,
                        "stopped_at": result.stopped_at, "reasons": {k: v.value for k, v in result.reasons.items()}})
        except MedicoSAMError as error:
            events.put({"event": "error", "status": 400, "detail": str(error)})
        except Exception as error:  # the client must hear of it; the server keeps serving
            logger.exception("propagation failed")
            events.put({"event": "error", "status": 500, "detail": f"propagation failed on the server: {error}"})
        finally:
            predictor.on_slice = None
            events.put(None)

    threading.Thread(target=run, daemon=True, name="medicosam-propagate").start()
    try:
        while True:
            try:
                event = events.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.002)
                continue
            if event is None:
                return
            yield (json.dumps(event) + "\n").encode()
    finally:
        session.cancel.set()  # the client left: stop at the next slice


def _error(status: int, detail: str, code: str = "") -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status_code=status)


async def _read_body(request: Request, limit: int, limit_mb: int) -> bytes:
    """The body, refused (413) as soon as it passes `limit` bytes (chunked uploads have no length)."""
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _Refused(413, f"request body is over the server's limit of {limit_mb} MB "
                                    "(medicosam serve --max-upload-mb)", "too_large")
            chunks.append(chunk)
    except ClientDisconnect:  # nobody is left to answer; the server goes on
        raise _Refused(400, "the client went away before the request's end", "disconnected") from None
    return b"".join(chunks)


async def _read_json(request: Request, limit: int, limit_mb: int) -> dict:
    body = await _read_body(request, limit, limit_mb)
    try:
        value = json.loads(body or b"{}")
    except ValueError as error:
        raise _Refused(400, f"the body is not JSON: {error}", "invalid") from None
    if not isinstance(value, dict):
        raise _Refused(400, "the body must be a JSON object", "invalid")
    return value


def _get_slice(body: dict, volume: np.ndarray):
    axis, index = body.get("axis"), body.get("index")
    if not isinstance(axis, int) or not 0 <= axis <= 2 or not isinstance(index, int):
        raise _Refused(400, "'axis' must be 0, 1 or 2 and 'index' a slice number", "invalid")
    if not 0 <= index < volume.shape[axis]:
        raise _Refused(400, f"slice {index} is outside the volume: axis {axis} has {volume.shape[axis]} "
                            "slices", "invalid")
    return axis, index


def _get_slice_shape(volume: np.ndarray, axis: int) -> tuple:
    """(rows, columns) of a slice along `axis`: the shape every mask prompt and seed must have."""
    return tuple(int(n) for n in np.delete(np.array(volume.shape[:3]), axis))
