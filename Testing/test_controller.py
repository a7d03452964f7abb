"""The effect's controller with a real tiny SAM checkpoint on a real T1: which model, cache, predictor and
sessions live, and when each is made or dropped (decisions the Slicer file used to take untested)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers_session import get_rotated_ijk_to_ras, get_test_volume, get_view_normal, get_voxel_ras

from medicosam.effect.controller import EffectController, get_propagation_config
from medicosam.effect.settings import CUSTOM_MODEL, EffectSettings
from medicosam.errors import InputError
from medicosam.markups import MarkupsPoint, MarkupsROI
from medicosam.propagation import PropagationConfig

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
    assert controller.load_model(settings) == "cpu"
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
    preview, neighbours = controller.submit_markups(session, points, [], NORMAL, refine=False).result(timeout=60)
    assert (preview.axis, preview.index) == (0, 18) and session.refine is False
    assert neighbours == [(0, 19), (0, 17), (0, 20), (0, 16)]
    assert controller.submit_markups(session, points, [], NORMAL, True).result(timeout=60) is None  # unchanged
    predictor = session.predictor
    assert predictor.encoder_calls == 1
    controller.prefetch(session, neighbours)
    controller.get_worker().submit(lambda: None, background=True).result(timeout=60)  # after the prefetches
    assert predictor.encoder_calls == 5
    empty = controller.submit_markups(session, [], [], NORMAL, True).result(timeout=60)
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
