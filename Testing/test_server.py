"""`medicosam serve` over real HTTP: uvicorn in a subprocess on 127.0.0.1 with a tiny real SAM, real MR.

The remote path must give the local path's masks (point, box, refinement, propagation, the
`segment` command), refuse bad tokens, sizes and arrays with 4xx and keep serving, keep 8 clients'
volumes apart under one cache cap, and survive a server killed mid-propagation (an error, nothing
kept) and restarted (the client re-uploads by itself). The client also runs where torch is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from helpers_server import CACHE_MB, ROOT, TOKEN, Server

from medicosam.client import RemotePredictor, ServerClient
from medicosam.errors import InputError, RunError
from medicosam.prompts import Prompts
from medicosam.propagation import PropagationConfig
from medicosam.wire import PROTOCOL_HEADER, encode_array, get_digest


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    running = Server(tiny_checkpoint).start()
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
