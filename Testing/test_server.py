"""`medicosam serve` over real HTTP: uvicorn in a subprocess on 127.0.0.1 with a tiny real SAM, real MR.

The remote path must give the local path's masks (point, box, refinement, propagation, the
`segment` command), refuse bad tokens, sizes and arrays with 4xx and keep serving, keep 8 clients'
volumes apart under one cache cap, and survive a server killed mid-propagation (an error, nothing
kept) and restarted (the client re-uploads by itself). The client also runs where torch is absent.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from helpers_server import CACHE_MB, OTHER_TOKEN, ROOT, TOKEN, Server

from medicosam.client import RemotePredictor, ServerClient
from medicosam.errors import InputError, RunError
from medicosam.prompts import Prompts
from medicosam.propagation import PropagationConfig
from medicosam.wire import PROTOCOL_HEADER, encode_array, get_digest, to_text

MAX_REQUEST_MB = 1  # the module's server: 90 mask prompts of a (117, 99) slice pass it


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    running = Server(tiny_checkpoint, None, "--max-request-mb", str(MAX_REQUEST_MB)).start()
    yield running
    running.kill()


@pytest.fixture(scope="module")
def local(tiny_checkpoint):
    from medicosam.models.checkpoint import load_sam

    return load_sam(str(tiny_checkpoint), device="cpu", allow_custom=True)


@pytest.fixture(scope="module")
def mr(icbm152):
    return icbm152["t1"][20:60]  # 40 axial slices of real MR, uint8


def _pair(local, server, volume):
    from medicosam.predictor import VolumePredictor

    remote = RemotePredictor(ServerClient(server.url, TOKEN), volume, fast=False)
    return VolumePredictor.from_loaded(local, volume, fast=False), remote


def _centre(volume, axis=0):
    index = volume.shape[axis] // 2
    h, w = np.take(volume, index, axis).shape
    return index, np.array([[w / 2, h / 2]])


def test_point_box_and_refinement_give_the_local_masks(local, server, mr):
    here, there = _pair(local, server, mr)
    index, point = _centre(mr)
    for prompts in (Prompts(point, [1]), Prompts(box=[20, 30, 70, 90]), Prompts(point, [1], box=[20, 30, 70, 90])):
        a, b = here.predict(0, index, prompts), there.predict(0, index, prompts)
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    first = here.predict(0, index, Prompts(point, [1]))
    refined = Prompts(np.concatenate([point, [[30.0, 40.0]]]), [1, 0], logits=first.logits[0])
    np.testing.assert_array_equal(here.predict(0, index, refined).masks, there.predict(0, index, refined).masks)
    two = [Prompts(point, [1]), Prompts(box=[10, 10, 50, 60])]  # several objects in one call
    np.testing.assert_array_equal(here.predict(0, index, two).masks, there.predict(0, index, two).masks)


def test_propagation_streams_the_local_result_and_cancel_keeps_what_was_accepted(local, server, mr):
    here, there = _pair(local, server, mr)
    index, point = _centre(mr)
    seeds = {index: here.predict_mask(0, index, Prompts(point, [1]))}
    config = PropagationConfig(iou_threshold=0.0, max_slices=6)
    expected = here.propagate(0, seeds, config)
    reports = []
    result = there.propagate(0, seeds, config, progress=lambda d, t: reports.append((d, t)))
    assert sorted(result.masks) == sorted(expected.masks) and len(expected.masks) > 1
    for i, mask in expected.masks.items():
        np.testing.assert_array_equal(result.masks[i], mask)
    assert result.reasons == expected.reasons and result.stopped_at == expected.stopped_at
    assert reports[-1][0] == reports[-1][1] > 0
    whole = PropagationConfig(iou_threshold=0.0)  # every slice: the cancel arrives long before the end
    expected = here.propagate(0, seeds, whole)
    cancelled = there.propagate(0, seeds, whole, should_cancel=lambda: True)
    assert cancelled.cancelled and index in cancelled.masks and len(cancelled.masks) < len(expected.masks)
    for i, mask in cancelled.masks.items():
        np.testing.assert_array_equal(mask, expected.masks[i])


def test_segment_command_with_server_writes_the_local_mask(tiny_checkpoint, server, mr, tmp_path):
    import SimpleITK as sitk

    from medicosam.cli import main

    image = tmp_path / "mr.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(mr), str(image))
    k, (x, y) = mr.shape[0] // 2, _centre(mr)[1][0]
    common = ["--point", f"{x},{y},{k}", "--ijk", "--no-fast", "--propagate", "--max-slices", "3"]
    assert main(["segment", str(image), "--checkpoint", str(tiny_checkpoint), "--allow-custom", "--device", "cpu",
                 "--out", str(tmp_path / "here.nii.gz"), *common]) == 0
    assert main(["segment", str(image), "--server", server.url, "--token", TOKEN,
                 "--out", str(tmp_path / "there.nii.gz"), *common]) == 0
    here, there = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{n}.nii.gz"))) for n in ("here", "there"))
    assert here.any()
    np.testing.assert_array_equal(here, there)


def test_no_or_wrong_token_is_401_and_computes_nothing(server, mr):
    assert requests.get(server.url + "/v1/health", timeout=5).json()["protocol"] == 1
    before = ServerClient(server.url, TOKEN).get_model()["cache_bytes"]
    for headers in ({}, {"Authorization": "Bearer wrong-token-000000"}, {"Authorization": TOKEN}):
        for method, path in (("GET", "/v1/models"), ("PUT", f"/v1/volumes/{get_digest(mr)}"),
                             ("POST", "/v1/sessions/x/predict")):
            response = requests.request(method, server.url + path, headers=headers, data=b"x", timeout=5)
            assert response.status_code == 401, (method, path, headers)
            assert "token" in response.json()["detail"]
    with pytest.raises(InputError, match="refused the token"):
        RemotePredictor(ServerClient(server.url, "wrong-token-000000"), mr)
    client = ServerClient(server.url, TOKEN)
    client._model = None
    assert client.get_model()["cache_bytes"] == before


def test_oversized_malformed_and_outside_requests_are_4xx_and_the_server_keeps_serving(server, mr):
    client = ServerClient(server.url, TOKEN)
    noise = np.random.default_rng(0).integers(-30000, 30000, (40, 128, 128), dtype=np.int16)  # 1.3 MB, incompressible
    big = np.concatenate([noise, noise])
    with pytest.raises(InputError, match="too large"):
        client.upload(big)
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def put(array_bytes, digest="0" * 64):
        return requests.put(f"{server.url}/v1/volumes/{digest}", data=array_bytes, headers=auth, timeout=10)

    assert put(b"\0" * (3 * 2**20)).status_code == 413
    assert put(b"not an array").status_code == 400
    complex_volume = np.zeros((2, 4, 4), np.complex64)
    response = put(encode_array(complex_volume), get_digest(complex_volume))
    assert response.status_code == 400 and "dtype complex64" in response.json()["detail"]
    assert put(encode_array(np.zeros((4, 4), np.uint8))).status_code == 400  # not a volume
    assert put(encode_array(mr)).status_code == 400  # digest of other content
    remote = RemotePredictor(client, mr, fast=False)
    index, point = _centre(mr)
    with pytest.raises(InputError, match="outside the"):
        remote.predict(0, index, Prompts([[5000.0, 10.0]], [1]))
    with pytest.raises(InputError, match="outside the volume"):
        remote.predict(0, 999, Prompts(point, [1]))
    with pytest.raises(InputError, match="logits of shape"):
        remote.predict(0, index, Prompts(point, [1], logits=np.zeros((8, 8), np.float32)))
    session = remote.session
    bad = [{"axis": 5, "index": 0, "objects": []}, {"axis": 0, "index": 1, "objects": [{"points": "x"}]},
           {"axis": 0, "index": 1, "objects": [{"points": [[1, 2]], "labels": [1], "colour": 1}]}]
    for body in bad:
        response = requests.post(f"{server.url}/v1/sessions/{session}/predict", json=body, headers=auth, timeout=10)
        assert response.status_code == 400 and response.json()["detail"]
    response = requests.post(f"{server.url}/v1/sessions/{session}/propagate", headers=auth, timeout=10,
                             json={"axis": 0, "seeds": {"1": "x"}, "config": {"mode": "nope"}})
    assert response.status_code == 400
    response = requests.get(server.url + "/v1/models", headers={**auth, PROTOCOL_HEADER: "99"}, timeout=5)
    assert response.status_code == 400 and "protocol" in response.json()["detail"]
    assert remote.predict(0, index, Prompts(point, [1])).masks.shape == (1, *mr.shape[1:])  # still serving


def test_eight_clients_on_different_volumes_get_their_own_masks_under_one_cache_cap(local, server, mr):
    volumes = [np.ascontiguousarray(np.roll(mr, 7 * n, axis=2)[n: n + 12]) for n in range(8)]
    index, point = _centre(volumes[0])
    prompts = Prompts(point, [1])

    def run(volume):
        remote = RemotePredictor(ServerClient(server.url, TOKEN), volume, fast=False)
        return [remote.predict(0, i, prompts).masks[0] for i in (index - 2, index, index + 2)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, volumes))
    from medicosam.predictor import VolumePredictor

    for volume, masks in zip(volumes, results):
        here = VolumePredictor.from_loaded(local, volume, fast=False)
        for i, mask in zip((index - 2, index, index + 2), masks):
            np.testing.assert_array_equal(mask, here.predict_mask(0, i, prompts))
    assert len({get_digest(v) for v in volumes}) == 8
    model = ServerClient(server.url, TOKEN).get_model()
    assert 0 < model["cache_bytes"] <= model["cache_max_bytes"] == CACHE_MB * 2**20


def test_killed_mid_propagation_reports_it_keeps_nothing_and_a_restart_reuploads(local, tiny_checkpoint, mr):
    server = Server(tiny_checkpoint).start()
    try:
        here, there = _pair(local, server, mr)
        index, point = _centre(mr)
        seeds = {index: here.predict_mask(0, index, Prompts(point, [1]))}
        config = PropagationConfig(iou_threshold=0.0, max_slices=15)
        killed = threading.Event()

        def kill_after_two(done, total):
            if done >= 2 and not killed.is_set():
                killed.set()
                server.kill()

        with pytest.raises(RunError, match="stopped answering during propagation|cannot reach"):
            there.propagate(0, seeds, config, progress=kill_after_two)
        with pytest.raises(RunError, match="cannot reach the MedicoSAM server"):
            there.predict(0, index, Prompts(point, [1]))
        server.start()  # the same address, nothing remembered
        old_session = there.session
        short = PropagationConfig(iou_threshold=0.0, max_slices=3)
        result = there.propagate(0, seeds, short)
        assert there.session != old_session  # opened again, the volume uploaded again
        expected = here.propagate(0, seeds, short)
        assert sorted(result.masks) == sorted(expected.masks)
        for i, mask in expected.masks.items():
            np.testing.assert_array_equal(result.masks[i], mask)
    finally:
        server.kill()


def test_client_works_where_torch_cannot_be_imported(server, mr, tmp_path):
    np.save(tmp_path / "mr.npy", mr)
    script = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "segment_anything", "SimpleITK", "scipy", "skimage"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import numpy as np
from medicosam.client import RemotePredictor, ServerClient
from medicosam.prompts import Prompts
from medicosam.propagation import PropagationConfig
volume = np.load({str(tmp_path / "mr.npy")!r})
client = ServerClient({server.url!r}, {TOKEN!r})
print(client.describe())
remote = RemotePredictor(client, volume, fast=False)
mask = remote.predict_mask(0, 20, Prompts([[49.5, 58.5]], [1]))
result = remote.propagate(0, {{20: mask}}, PropagationConfig(iou_threshold=0.0, max_slices=2))
assert "torch" not in sys.modules and "segment_anything" not in sys.modules
print("ok", mask.shape, sorted(result.masks))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "MedicoSAMSlicer")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Connected to" in done.stdout and "ok (117, 99)" in done.stdout


def test_serve_refuses_other_addresses_without_a_token(tiny_checkpoint, monkeypatch, capsys):
    from medicosam.cli import main
    from medicosam.server.config import ServeConfig

    monkeypatch.delenv("MEDICOSAM_TOKEN", raising=False)
    assert main(["serve", "--checkpoint", str(tiny_checkpoint), "--host", "0.0.0.0"]) == 2
    assert "--token" in capsys.readouterr().err
    with pytest.raises(InputError, match="at least 8"):
        ServeConfig("m", token="short")
    config = ServeConfig("m", host="0.0.0.0", token="a-long-token,another-token")
    assert config.get_owner("Bearer another-token") == "token1" and config.get_owner("Bearer a-long") is None
    monkeypatch.setenv("MEDICOSAM_TOKEN", "from-the-environment")
    assert ServeConfig("m", host="10.0.0.1").tokens == ["from-the-environment"]


def _auth(token=TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _open_session(server, volume) -> str:
    remote = RemotePredictor(ServerClient(server.url, TOKEN), volume, fast=False)
    remote.get_embedding(0, 0)  # uploads the volume and opens the session
    return remote.session


def _held(server, volume) -> bool:
    return requests.head(f"{server.url}/v1/volumes/{get_digest(volume)}", headers=_auth(), timeout=10).ok


def _counts(server) -> tuple:
    """(sessions, uploads) the server holds; asking does not expire anything."""
    model = requests.get(server.url + "/v1/models", headers=_auth(), timeout=10).json()
    return model["sessions"], model["volumes"]


def _peak_mb(process) -> float:
    """The peak resident memory of a process so far (Linux's VmHWM)."""
    status = Path(f"/proc/{process.pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def _deflated_zeros(shape, dtype="|b1") -> str:
    """Base64 of `encode_array` bytes for a zero array of `shape`, made without holding the array:
    a few hundred kB that inflate to gigabytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    deflate, zeros = zlib.compressobj(9), bytes(2**24)
    parts = [deflate.compress(header.getvalue())]
    parts += [deflate.compress(zeros) for _ in range(int(np.prod(shape)) * np.dtype(dtype).itemsize // len(zeros))]
    import base64

    return base64.b64encode(b"".join(parts) + deflate.flush()).decode()


def test_mask_fields_are_checked_before_they_inflate_and_a_request_has_a_total_cap(server, mr):
    session = _open_session(server, mr)
    url = f"{server.url}/v1/sessions/{session}/predict"
    index, point = _centre(mr)
    huge = _deflated_zeros((16384, 32768))  # 512 MB of mask from 0.7 MB of request
    before = _peak_mb(server.process)
    response = requests.post(url, headers=_auth(), timeout=60, json={
        "axis": 0, "index": index, "objects": [{"points": point.tolist(), "labels": [1], "mask": huge}]})
    assert response.status_code == 400
    assert _peak_mb(server.process) - before < 64  # the old server inflated it first: +1 GB
    assert "mask prompt of shape (16384, 32768): it must be (117, 99)" in response.json()["detail"]
    slice_mask = to_text(np.zeros(mr.shape[1:], bool))  # 11.6 kB each inflated: 100 of them pass 1 MB
    objects = [{"points": point.tolist(), "labels": [1], "mask": slice_mask}] * 100
    response = requests.post(url, headers=_auth(), timeout=60, json={"axis": 0, "index": index, "objects": objects})
    assert response.status_code == 400 and "--max-request-mb" in response.json()["detail"]
    for seed, shape in ((huge, (16384, 32768)), (to_text(np.zeros((5, 5), bool)), (5, 5))):
        response = requests.post(f"{server.url}/v1/sessions/{session}/propagate", headers=_auth(), timeout=60,
                                 json={"axis": 0, "seeds": {str(index): seed}, "config": {}})
        assert response.status_code == 400  # refused before a slice is computed, not an error in the stream
        assert f"seed 20 of shape {shape}: it must be (117, 99)" in response.json()["detail"]
    assert _peak_mb(server.process) - before < 64


def test_point_labels_are_0_or_1(server, mr):
    session = _open_session(server, mr)
    index, point = _centre(mr)
    for label in (7, 2, 3, -1, -5):  # 7 was a 500; SAM's own box-corner and padding labels gave masks
        response = requests.post(f"{server.url}/v1/sessions/{session}/predict", headers=_auth(), timeout=30,
                                 json={"axis": 0, "index": index, "objects": [{"points": point.tolist(),
                                                                               "labels": [label]}]})
        assert response.status_code == 400, label
        assert response.json()["detail"] == (f"point labels [{label}]: a point's label is 1 (positive) or 0 "
                                             "(negative)")
    with pytest.raises(InputError, match="point labels"):
        Prompts(point, [2])


def test_another_tokens_session_cannot_be_closed(server, mr):
    session = _open_session(server, mr)
    url = f"{server.url}/v1/sessions/{session}"
    response = requests.delete(url, headers=_auth(OTHER_TOKEN), timeout=10)
    assert response.status_code == 404 and response.json()["code"] == "unknown_session"
    index, point = _centre(mr)
    body = {"axis": 0, "index": index, "objects": [{"points": point.tolist(), "labels": [1]}]}
    assert requests.post(url + "/predict", headers=_auth(), json=body, timeout=30).status_code == 200  # still open
    assert requests.delete(url, headers=_auth(), timeout=10).json() == {"closed": session}
    assert requests.delete(url, headers=_auth(), timeout=10).status_code == 404


def test_upload_caps_idle_expiry_on_a_timer_and_a_client_gone_mid_upload(tiny_checkpoint, mr, tmp_path):
    log = tmp_path / "server.log"
    server = Server(tiny_checkpoint, None, "--max-volumes", "2", "--volumes-mb", "1", "--session-minutes", "0.05",
                    log=log).start()
    try:
        client = ServerClient(server.url, TOKEN)
        volumes = [np.ascontiguousarray(mr[:34] + n) for n in range(3)]  # 0.38 MB each
        _open_session(server, volumes[0])  # an open session holds it
        for volume in volumes[1:]:
            client.upload(volume)
        assert not _held(server, volumes[1])  # two at most: the idle one made room
        assert _held(server, volumes[2]) and _held(server, volumes[0])
        big = np.ascontiguousarray(np.tile(mr[:1], (70, 1, 1)))  # 0.78 MB: with the pinned one past 1 MB
        with pytest.raises(RunError, match="--volumes-mb 1"):
            client.upload(big)
        assert _held(server, volumes[2])  # nothing was dropped for an upload that cannot fit
        assert _counts(server) == (1, 2)

        # A client that goes away mid-upload: no traceback in the server's log, and it keeps serving.
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(f"PUT /v1/volumes/{'0' * 64} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                         "Content-Length: 1000000\r\n\r\n".encode() + bytes(1000))
        assert client.get_health()["status"] == "ok"

        # Nobody calls the server: the timer expires the session and the uploads (3 s idle time).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _counts(server) != (0, 0):
            time.sleep(0.5)
        assert _counts(server) == (0, 0)
    finally:
        server.kill()
    text = log.read_text()
    assert "Traceback" not in text and "ClientDisconnect" not in text, text


def test_the_start_line_is_news_not_a_warning(tiny_checkpoint, tmp_path):
    """`serve`'s normal start printed `medicosam: WARNING: serving ...`; it is a plain line on stdout."""
    import time

    from helpers_server import get_free_port

    port = get_free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "MedicoSAMSlicer"), str(ROOT / "MedicoSAMTraining")])}
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        process = subprocess.Popen([sys.executable, "-m", "medicosam.cli", "serve", "--checkpoint",
                                    str(tiny_checkpoint), "--device", "cpu", "--port", str(port), "--token", TOKEN],
                                   stdout=out, stderr=err, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "out").read_text() and time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "err").read_text()
            time.sleep(0.2)
    finally:
        process.kill()
        process.wait()
    assert (tmp_path / "out").read_text() == (f"serving {tiny_checkpoint} (custom) on http://127.0.0.1:{port}, token "
                                              "required; Ctrl+C stops it\n")
    assert "WARNING" not in (tmp_path / "err").read_text()
