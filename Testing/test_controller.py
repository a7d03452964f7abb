"""The effect's controller with a real tiny SAM checkpoint on a real T1: which model, cache, predictor and
sessions live, and when each is made or dropped (decisions the Slicer file used to take untested); the
same over a real `medicosam serve` subprocess ("Run on: server"), and with a real reduced SAM2."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import requests
from helpers_server import TOKEN, Server, get_free_port
from helpers_session import get_rotated_ijk_to_ras, get_test_volume, get_view_normal, get_voxel_ras

from medicosam.effect.controller import EffectController, RemoteModel, get_propagation_config
from medicosam.effect.settings import CUSTOM_MODEL, EffectSettings, ServerSettings
from medicosam.errors import InputError, RunError
from medicosam.markups import Markups, MarkupsPoint, MarkupsROI
from medicosam.propagation import PropagationConfig
from medicosam.wire import PROTOCOL, PROTOCOL_HEADER

MATRIX = get_rotated_ijk_to_ras()
NORMAL = get_view_normal(MATRIX, 0)
SEGMENT_A, SEGMENT_B = ("Segmentation", "A"), ("Segmentation", "B")


class Effect:
    """What the Slicer file gives the controller: `run` on the worker (here: wait for the result), and
    a display to clear when the sessions go."""

    def __init__(self):
        self.controller = EffectController(self.run, self.clear_display)
        self.runs, self.cleared = [], 0

    def run(self, function, text, progress):
        self.runs.append(text)
        return self.controller.get_worker().submit(function).result(timeout=120)

    def clear_display(self):
        self.cleared += 1


@pytest.fixture
def effect():
    effect = Effect()
    yield effect
    effect.controller.release()


@pytest.fixture
def settings(tiny_checkpoint):
    return EffectSettings(model=CUSTOM_MODEL, custom_checkpoint=str(tiny_checkpoint), device="cpu", fast=False,
                          cache_mb=256)


@pytest.fixture
def volume(icbm152):
    return get_test_volume(icbm152)


def get_session(controller, segment, volume, key="volume 1", create=True, matrix=MATRIX):
    return controller.get_session(segment, key, matrix, lambda: volume, refine=True, create=create)


def test_model_loads_once_and_survives_a_speed_change(effect, settings, volume):
    controller = effect.controller
    assert not controller.use_settings(settings)  # nothing loaded: the effect asks, then loads
    assert get_session(controller, SEGMENT_A, volume) is None
    assert controller.load_model(settings) == f"Model {CUSTOM_MODEL} ready on cpu."
    loaded, cache = controller.loaded, controller.cache
    assert controller.use_settings(settings) and effect.runs == [f"Loading {CUSTOM_MODEL}..."]
    session = get_session(controller, SEGMENT_A, volume)
    assert session.predictor.acceleration is None and session.predictor.cache is cache

    cleared = effect.cleared
    assert controller.use_settings(dataclasses.replace(settings, fast=True))  # same model, new predictor
    assert controller.loaded is loaded and controller.cache is cache and controller.sessions == {}
    assert effect.cleared == cleared + 1
    fast_session = get_session(controller, SEGMENT_A, volume)
    assert fast_session is not session and fast_session.predictor.acceleration is not None
    assert effect.runs.count(f"Loading {CUSTOM_MODEL}...") == 1

    for other in (dataclasses.replace(settings, device="auto"), dataclasses.replace(settings, model="sam_vit_b"),
                  dataclasses.replace(settings, custom_checkpoint=settings.custom_checkpoint + ".copy")):
        assert not controller.use_settings(other)  # another device or checkpoint: load again


def test_cache_size_changes_the_loaded_cache_in_place(effect, settings, volume):
    controller = effect.controller
    controller.load_model(settings)
    session = get_session(controller, SEGMENT_A, volume)
    controller.run(lambda: session.predictor.get_embedding(0, 18), "embed", None)
    cache = controller.cache
    assert cache.max_bytes == 256 * 1024**2 and len(cache) == 1
    assert controller.use_settings(dataclasses.replace(settings, cache_mb=128))
    assert controller.cache is cache and cache.max_bytes == 128 * 1024**2 and len(cache) == 1
    assert controller.sessions == {SEGMENT_A: session}  # nothing else changes


def test_one_volume_at_a_time_and_one_session_per_segment(effect, settings, volume):
    controller = effect.controller
    controller.load_model(settings)
    reads = []

    def read(array):
        reads.append(array.shape)
        return array

    first = controller.get_session(SEGMENT_A, "volume 1", MATRIX, lambda: read(volume), True)
    second = controller.get_session(SEGMENT_B, "volume 1", MATRIX, lambda: read(volume), False)
    assert first is not second and first.predictor is second.predictor and second.refine is False
    assert get_session(controller, SEGMENT_A, volume) is first and len(reads) == 1  # read once per volume
    moved = MATRIX.copy()
    moved[:3, 3] += 5.0  # the segmentation was moved: same session, new geometry
    assert get_session(controller, SEGMENT_A, volume, matrix=moved) is first
    np.testing.assert_array_equal(first.ijk_to_ras, moved)
    assert get_session(controller, ("Segmentation", "C"), volume, create=False) is None

    other = volume[:, ::-1].copy()
    assert get_session(controller, SEGMENT_A, other, key="volume 2", create=False) is None
    assert controller.predictor is first.predictor  # asking without create changes nothing
    replaced = controller.get_session(SEGMENT_A, "volume 2", MATRIX, lambda: read(other), True)
    assert replaced.predictor is not first.predictor and replaced.predictor.volume is other
    assert list(controller.sessions) == [SEGMENT_A] and len(reads) == 2
    assert replaced.predictor.cache is first.predictor.cache  # embeddings are keyed by volume: one cache
    assert effect.runs.count("Preparing the volume...") == 2

    cleared = effect.cleared
    controller.forget()  # the source volume or reference geometry changed in Slicer
    assert controller.sessions == {} and controller.predictor is None and effect.cleared == cleared + 1
    assert get_session(controller, SEGMENT_A, other, key="volume 2", create=False) is None


def test_a_write_onto_another_grid_is_refused_and_forgets_the_sessions(effect, settings, volume):
    controller = effect.controller
    controller.load_model(settings)
    session = get_session(controller, SEGMENT_A, volume)
    session.add_point(get_voxel_ras((18, 40, 35), MATRIX), True, NORMAL)
    request = controller.run(session.apply, "apply", None)
    controller.check_request(request, volume.shape)
    assert controller.sessions == {SEGMENT_A: session}
    with pytest.raises(InputError, match="geometry changed"):
        controller.check_request(request, (volume.shape[0] + 1, *volume.shape[1:]))
    assert controller.sessions == {}


def test_markups_update_the_preview_then_prefetch_the_neighbours(effect, settings, volume):
    controller = effect.controller
    controller.load_model(settings)
    session = get_session(controller, SEGMENT_A, volume)
    points = [MarkupsPoint(tuple(get_voxel_ras((18, 40, 35), MATRIX)), True)]
    preview, neighbours = controller.submit_markups(session, Markups(points), NORMAL, refine=False).result(timeout=60)
    assert (preview.axis, preview.index) == (0, 18) and session.refine is False
    assert neighbours == [(0, 19), (0, 17), (0, 20), (0, 16)]
    assert controller.submit_markups(session, Markups(points), NORMAL, True).result(timeout=60) is None  # unchanged
    predictor = session.predictor
    assert predictor.encoder_calls == 1
    controller.prefetch(session, neighbours)
    controller.get_worker().submit(lambda: None, background=True).result(timeout=60)  # after the prefetches
    assert predictor.encoder_calls == 5
    empty = controller.submit_markups(session, Markups(), NORMAL, True).result(timeout=60)
    assert empty == (None, [(0, 19), (0, 17), (0, 20), (0, 16)])  # the slice has no prompt left

    controller.release()
    assert controller.worker is None and controller.loaded is None and controller.sessions == {}


def test_propagation_stays_inside_an_roi_over_several_slices(effect, settings, volume):
    controller = effect.controller
    controller.load_model(settings)
    session = get_session(controller, SEGMENT_A, volume)
    settings = dataclasses.replace(settings, propagation=PropagationConfig(max_slices=4, iou_threshold=0.2))
    assert get_propagation_config(session, settings, [], NORMAL) is settings.propagation
    axes = MATRIX[:3, :3] / np.linalg.norm(MATRIX[:3, :3], axis=0)
    centre = tuple(get_voxel_ras((18, 40, 35), MATRIX))
    thick = MarkupsROI(centre, (20.0, 20.0, 4.5 * np.linalg.norm(MATRIX[:3, 2])), tuple(map(tuple, axes)))
    config = get_propagation_config(session, settings, [thick], NORMAL)
    assert config == dataclasses.replace(settings.propagation, slice_range=(16, 20))
    thin = MarkupsROI(centre, (20.0, 20.0, 0.5), tuple(map(tuple, axes)))  # a box on one slice: no bound
    assert get_propagation_config(session, settings, [thin], NORMAL).slice_range is None


# Run on: server ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    running = Server(tiny_checkpoint).start()
    yield running
    running.kill()


def get_remote_settings(settings, url, token=TOKEN):
    return dataclasses.replace(settings, server=ServerSettings("server", url, token))


def get_cache_bytes(server) -> int:
    return requests.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {TOKEN}",
                                                           PROTOCOL_HEADER: str(PROTOCOL)}).json()["cache_bytes"]


def test_run_on_server_gives_the_local_previews_prefetch_and_propagation(effect, settings, volume, server):
    from medicosam.client import RemotePredictor

    local = Effect()
    local.controller.load_model(settings)
    controller = effect.controller
    remote = get_remote_settings(settings, server.url)
    assert not controller.use_settings(remote)
    description = controller.load_model(remote)
    assert description.startswith(f"Connected to {server.url}: ") and "on cpu" in description
    assert isinstance(controller.loaded, RemoteModel) and controller.cache is None
    assert controller.use_settings(remote) and not controller.use_settings(settings)  # local: load again
    assert not controller.use_settings(get_remote_settings(settings, server.url, "another token"))
    session = get_session(controller, SEGMENT_A, volume)
    assert isinstance(session.predictor, RemotePredictor)
    assert effect.runs == [f"Connecting to {server.url}...", "Uploading the volume to the server..."]
    here = get_session(local.controller, SEGMENT_A, volume)

    points = [MarkupsPoint(tuple(get_voxel_ras((18, 40, 35), MATRIX)), True)]
    preview, neighbours = controller.submit_markups(session, Markups(points), NORMAL, refine=False).result(timeout=60)
    expected, _ = local.controller.submit_markups(here, Markups(points), NORMAL, refine=False).result(timeout=60)
    assert (preview.axis, preview.index) == (0, 18) and preview.mask.any()
    np.testing.assert_array_equal(preview.mask, expected.mask)
    before = get_cache_bytes(server)
    controller.prefetch(session, neighbours)
    controller.get_worker().submit(lambda: None, background=True).result(timeout=60)  # after the prefetches
    assert get_cache_bytes(server) > before  # the server embedded the neighbours

    config = PropagationConfig(iou_threshold=0.0, max_slices=3)
    reports = []
    request = controller.run(lambda: session.propagate(config, None, lambda d, t: reports.append(d)), "p", None)
    reference = local.controller.run(lambda: here.propagate(config, None), "p", None)
    assert sorted(request.masks) == sorted(reference.masks) and len(request.masks) > 1 and reports
    for index, mask in reference.masks.items():
        np.testing.assert_array_equal(request.masks[index], mask)
    cancelled = controller.run(lambda: session.propagate(PropagationConfig(iou_threshold=0.0), None,
                                                         should_cancel=lambda: True), "p", None)
    assert cancelled is None  # nothing written; the slices applied before stay accepted
    assert session.get_accepted_slices(0) == here.get_accepted_slices(0)
    local.controller.release()


def test_run_on_server_errors_say_what_is_wrong(effect, settings, server, monkeypatch):
    import medicosam.client

    controller = effect.controller
    with pytest.raises(InputError, match="refused the token"):
        controller.load_model(get_remote_settings(settings, server.url, "wrong token"))
    with pytest.raises(RunError, match="cannot reach the MedicoSAM server"):
        controller.load_model(get_remote_settings(settings, f"http://127.0.0.1:{get_free_port()}"))
    with pytest.raises(InputError, match="no server URL"):
        controller.load_model(get_remote_settings(settings, ""))
    monkeypatch.setattr(medicosam.client, "PROTOCOL", PROTOCOL + 1)  # an older or newer client
    with pytest.raises(InputError, match=f"speaks protocol {PROTOCOL}, this client {PROTOCOL + 1}"):
        controller.load_model(get_remote_settings(settings, server.url))
    assert controller.loaded is None


NO_TORCH = """
import importlib.abc, json, sys
blocked = {"torch", "torchvision", "segment_anything", "sam2", "scipy", "skimage", "SimpleITK", "xxhash"}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
sys.meta_path.insert(0, Blocker())
import numpy as np
from medicosam.effect.controller import EffectController
from medicosam.effect.requirements import get_missing_requirements
from medicosam.effect.settings import EffectSettings, ServerSettings
from medicosam.markups import Markups, MarkupsPoint
assert get_missing_requirements(remote=True) == []
url, token, volume_file, point, normal = json.loads(sys.argv[1])
controller = EffectController(lambda function, text, progress: controller.get_worker().submit(function).result())
controller.load_model(EffectSettings(fast=False, server=ServerSettings("server", url, token)))
volume = np.load(volume_file)
session = controller.get_session("segment", "volume", np.eye(4), lambda: volume, refine=True)
preview, _ = controller.submit_markups(session, Markups([MarkupsPoint(tuple(point), True)]), normal, True).result()
np.save(volume_file + ".mask.npy", preview.mask)
controller.release()
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in blocked)))
"""


def test_run_on_server_needs_no_torch_sam_or_weights(effect, settings, server, volume, tmp_path):
    """The remote path in an interpreter where torch, SAM, SAM2 and scipy cannot be imported."""
    import subprocess
    import sys

    volume_file = str(tmp_path / "volume.npy")
    np.save(volume_file, volume)
    point, normal = [35.0, 40.0, 18.0], [0.0, 0.0, 1.0]  # identity geometry: RAS = IJK
    arguments = json.dumps([server.url, TOKEN, volume_file, point, normal])
    run = subprocess.run([sys.executable, "-c", NO_TORCH, arguments], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]"
    effect.controller.load_model(settings)
    session = effect.controller.get_session("segment", "volume", np.eye(4), lambda: volume, refine=True)
    expected, _ = effect.controller.submit_markups(session, Markups([MarkupsPoint(tuple(point), True)]), normal,
                                                   True).result(timeout=60)
    assert expected.mask.any()
    np.testing.assert_array_equal(np.load(volume_file + ".mask.npy"), expected.mask)


# SAM2 ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sam2_checkpoint(tmp_path_factory):
    pytest.importorskip("sam2", reason="the [sam2] extra (.ci/setup installs it)")
    import torch

    from medicosam.sam2_models import build_sam2_model, export_sam2, get_reduced_config

    torch.manual_seed(0)
    config = get_reduced_config()
    path = tmp_path_factory.mktemp("sam2") / "sam2_tiny.pt"
    export_sam2(build_sam2_model(config), config, path)
    return path


def test_a_sam2_model_previews_prefetches_and_propagates(effect, settings, volume, sam2_checkpoint):
    from medicosam.predictor import get_volume_predictor
    from medicosam.prompts import Prompts
    from medicosam.sam2_predictor import Sam2VolumePredictor

    controller = effect.controller
    sam2 = dataclasses.replace(settings, custom_checkpoint=str(sam2_checkpoint))
    assert controller.load_model(sam2) == f"Model {CUSTOM_MODEL} ready on cpu."
    assert controller.loaded.family.name == "sam2"
    session = get_session(controller, SEGMENT_A, volume)
    assert isinstance(session.predictor, Sam2VolumePredictor) and session.predictor.cache is controller.cache

    points = [MarkupsPoint(tuple(get_voxel_ras((18, 40, 35), MATRIX)), True)]
    preview, neighbours = controller.submit_markups(session, Markups(points), NORMAL, refine=False).result(timeout=60)
    point = np.array([session.get_prompts((0, 18)).points[0]])
    expected = get_volume_predictor(controller.loaded, volume).predict_mask(0, 18, Prompts(point, [1]))
    np.testing.assert_array_equal(preview.mask, expected)
    controller.prefetch(session, neighbours)
    controller.get_worker().submit(lambda: None, background=True).result(timeout=60)
    assert session.predictor.encoder_calls == 5

    controller.run(session.apply, "apply", None)
    reports = []
    config = PropagationConfig(max_slices=2)
    request = controller.run(lambda: session.propagate(config, None, lambda d, t: reports.append(d)), "p", None)
    assert request is not None and set(request.masks) <= {16, 17, 19, 20} and reports  # the video engine
