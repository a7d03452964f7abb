"""Slicer-free parts of the effect: the inference worker thread, parameters, model menu, packages."""

from __future__ import annotations

import threading
import time

import pytest
from helpers_session import get_rotated_ijk_to_ras, get_test_volume, get_view_normal, get_voxel_ras

from medicosam.effect.requirements import (
    PIP_REQUIREMENTS,
    check_family_supported,
    get_missing_requirements,
    is_torch_installed,
)
from medicosam.effect.session import SegmentationSession
from medicosam.effect.settings import (
    CUSTOM_MODEL,
    DIRECTION_LABELS,
    MODE_LABELS,
    NOT_PARAMETERS,
    RENAMED,
    EffectSettings,
    ServerSettings,
    get_model_choices,
)
from medicosam.effect.worker import InferenceWorker, TaskProgress
from medicosam.errors import InputError, RunError
from medicosam.models.download import list_cached_models
from medicosam.models.families import FAMILIES
from medicosam.models.registry import MODELS
from medicosam.options import get_option_fields
from medicosam.predictor import VolumePredictor
from medicosam.prompts import PROPAGATION_MODES
from medicosam.propagation import DIRECTIONS, PropagationConfig


@pytest.fixture
def worker():
    worker = InferenceWorker()
    yield worker
    worker.shutdown()


def test_jobs_run_in_order_on_one_persistent_thread(worker):
    threads, order = set(), []

    def job(value):
        threads.add(threading.get_ident())
        order.append(value)
        return value * 2

    futures = [worker.submit(job, i) for i in range(5)]
    assert [f.result(timeout=10) for f in futures] == [0, 2, 4, 6, 8]
    assert order == list(range(5)) and threads == {worker.thread.ident} != {threading.get_ident()}
    failing = worker.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=10)
    assert worker.submit(job, 7).result(timeout=10) == 14  # an error does not stop the thread


def test_foreground_jobs_overtake_queued_background_jobs(worker):
    gate, order = threading.Event(), []
    worker.submit(gate.wait)
    worker.submit(order.append, "background 1", background=True)
    worker.submit(order.append, "background 2", background=True)
    last = worker.submit(order.append, "foreground")
    gate.set()
    last.result(timeout=10)
    worker.submit(lambda: None, background=True).result(timeout=10)
    assert order == ["foreground", "background 1", "background 2"]

    gate.clear()
    worker.submit(gate.wait)
    stale = worker.submit(order.append, "stale", background=True)
    worker.clear_background()  # the user moved on: neighbours of the old slice are not needed
    fresh = worker.submit(order.append, "fresh", background=True)
    gate.set()
    fresh.result(timeout=10)
    assert stale.cancelled() and order[-1] == "fresh" and "stale" not in order


def test_shutdown_cancels_queued_jobs(worker):
    gate, started = threading.Event(), threading.Event()
    running = worker.submit(lambda: started.set() or gate.wait())
    started.wait(10)
    queued = worker.submit(time.sleep, 0)
    worker.shutdown(wait=False)
    gate.set()
    running.result(timeout=10)
    worker.thread.join(10)
    assert queued.cancelled() and not worker.thread.is_alive()
    with pytest.raises(RunError, match="shut down"):
        worker.submit(time.sleep, 0)


def test_previews_and_neighbour_prefetch_use_the_shared_embedding_cache(worker, tiny_sam, icbm152):
    """The effect's click job, then background embeddings of the neighbours: clicking a neighbour next
    costs no encoder call."""
    matrix, volume = get_rotated_ijk_to_ras(), get_test_volume(icbm152)
    predictor = VolumePredictor(tiny_sam, volume)
    session = SegmentationSession(predictor, matrix)
    normal = get_view_normal(matrix, 0)

    def click(index):
        session.add_point(get_voxel_ras((index, 40, 35), matrix), True, normal)
        return session.update_preview(), session.get_prefetch_slices()

    preview, neighbours = worker.submit(click, 18).result(timeout=30)
    assert preview.index == 18 and predictor.encoder_calls == 1
    prefetch = [worker.submit(predictor.get_embedding, *key, background=True) for key in neighbours]
    for future in prefetch:
        future.result(timeout=30)
    assert predictor.encoder_calls == 1 + len(neighbours) == 5
    worker.submit(click, 19).result(timeout=30)
    assert predictor.encoder_calls == 5


def test_gui_thread_follows_progress_and_cancels_a_running_propagation(worker, tiny_sam, icbm152):
    matrix, volume = get_rotated_ijk_to_ras(), get_test_volume(icbm152)
    session = SegmentationSession(VolumePredictor(tiny_sam, volume), matrix)
    session.add_point(get_voxel_ras((18, 40, 35), matrix), True, get_view_normal(matrix, 0))
    progress, answered = TaskProgress(), threading.Event()

    def report(done, total):  # the worker waits at slice 2 until the GUI thread reacted: no race
        progress.report(done, total)
        if done == 2:
            answered.wait(10)

    config = PropagationConfig(iou_threshold=0.0)
    future = worker.submit(session.propagate, config, None, report, progress.is_cancelled)
    seen = set()
    while not future.done():  # what the effect's progress dialog loop does
        done, total = progress.get()
        seen.add(done)
        if done >= 2:
            progress.cancel()
            answered.set()
        time.sleep(0.001)
    assert future.result() is None  # cancelled: nothing to write
    assert 2 in seen and progress.get()[1] > 2
    assert session.get_accepted_slices(0) == []


def test_task_progress_stops_downloads_once_cancelled():
    progress = TaskProgress()
    assert progress.report(10, None) is True and progress.get() == (10, None)
    progress.cancel()
    assert progress.report(20, 100) is False and progress.is_cancelled()


def test_settings_round_trip_through_parameter_strings():
    propagation = PropagationConfig(mode="box_mask", iou_threshold=0.3, box_extension=2.0, direction="up",
                                    max_slices=12)
    settings = EffectSettings(model="sam_vit_b", device="cpu", tool="box", refine=False, cache_mb=512,
                              propagation=propagation)
    assert EffectSettings.from_parameters(settings.to_parameters().get) == settings
    assert EffectSettings.from_parameters(lambda name: "") == EffectSettings()  # a new scene: defaults
    parameters = settings.to_parameters()
    assert parameters["Refine"] == "0" and parameters["PropagationMaxSlices"] == "12"
    assert parameters["PropagationIouThreshold"] == "0.3" and parameters["PropagationDirection"] == "up"
    assert EffectSettings().to_parameters()["PropagationMaxSlices"] == "0"  # no limit: the spin box's 0
    assert EffectSettings().propagation.max_slices is None
    assert settings.checkpoint == "sam_vit_b" and settings.cache_bytes == 512 * 1024**2


def test_every_propagation_option_is_a_parameter_but_the_roi_range():
    """A new `PropagationConfig` option becomes an effect parameter without a change in the effect."""
    names = set(EffectSettings().to_parameters())
    fields = [field.name for field in get_option_fields(PropagationConfig)]
    assert NOT_PARAMETERS == ("slice_range",) and set(NOT_PARAMETERS) < set(fields)
    expected = {"Propagation" + "".join(part.capitalize() for part in name.split("_"))
                for name in fields if name not in NOT_PARAMETERS}
    assert expected == {name for name in names if name.startswith("Propagation")}
    assert set(RENAMED) <= expected


def test_scenes_saved_with_the_old_parameter_names_keep_their_values():
    old = {"IoUThreshold": "0.25", "PropagationSlices": "7", "BoxExtension": "3", "PropagationMode": "box"}
    settings = EffectSettings.from_parameters(lambda name: old.get(name, ""))
    assert settings.propagation == PropagationConfig(mode="box", iou_threshold=0.25, box_extension=3.0,
                                                     max_slices=7)
    # setMRMLDefaults must not hide them behind defaults under the new names
    defaults = EffectSettings.get_parameter_defaults(lambda name: old.get(name, ""))
    assert (defaults["PropagationIouThreshold"], defaults["PropagationMaxSlices"]) == ("0.25", "7")
    assert defaults["Model"] == "medicosam_vit_b"
    assert EffectSettings.from_parameters(defaults.get) == settings
    newer = {**old, "PropagationIouThreshold": "0.6"}  # written by this version: the new name wins
    assert EffectSettings.from_parameters(lambda name: newer.get(name, "")).propagation.iou_threshold == 0.6


@pytest.mark.parametrize("parameters, message", [
    ({"Model": "sam_vit_x"}, "unknown model 'sam_vit_x'"),
    ({"PropagationIouThreshold": "high"}, "PropagationIouThreshold = 'high' is not a valid float"),
    ({"IoUThreshold": "1.5"}, "iou_threshold 1.5 is outside"),  # PropagationConfig's own check
    ({"Refine": "maybe"}, "Refine"),
    ({"PropagationMaxSlices": "-1"}, "max_slices -1 is negative"),
    ({"PropagationMode": "zigzag"}, "unknown propagation mode"),
    ({"Device": "tpu"}, "unknown device"),
    ({"EmbeddingCacheMB": "8"}, "at least 64"),
])
def test_bad_parameters_name_the_parameter(parameters, message):
    with pytest.raises(InputError, match=message):
        EffectSettings.from_parameters(lambda name: parameters.get(name, ""))


def test_custom_checkpoint_needs_a_file():
    with pytest.raises(InputError, match="no file is chosen"):
        _ = EffectSettings(model=CUSTOM_MODEL).checkpoint
    assert EffectSettings(model=CUSTOM_MODEL, custom_checkpoint="/data/tiny.pth").checkpoint == "/data/tiny.pth"


def test_menus_cover_the_core_choices():
    assert tuple(MODE_LABELS) == PROPAGATION_MODES
    assert tuple(DIRECTION_LABELS) == DIRECTIONS


def test_model_menu_marks_downloaded_models(tmp_path):
    (tmp_path / "sam_vit_b.pth").write_bytes(b"weights")
    (tmp_path / "medsam_vit_b.pth.part").write_bytes(b"half")  # interrupted download: not usable yet
    choices = get_model_choices(list_cached_models(tmp_path))
    names = [choice.name for choice in choices]
    assert names == [name for name, spec in MODELS.items() if spec.family is not None] + [CUSTOM_MODEL]
    state = {choice.name: choice.downloaded for choice in choices}
    assert state["sam_vit_b"] and not state["medsam_vit_b"] and not state["medicosam_vit_b"]
    labels = {choice.name: choice.label for choice in choices}
    assert labels["sam_vit_b"] == "sam_vit_b (downloaded)"
    assert labels["sam_vit_l"] == "sam_vit_l (not downloaded, 1250 MB)"
    assert labels["medicosam_vit_b"] == "medicosam_vit_b (not downloaded)"  # upstream publishes no size
    assert labels["sam2.1_hiera_tiny"] == "sam2.1_hiera_tiny (SAM2, not downloaded)"
    old = {choice.name: choice.label for choice in get_model_choices([], python=(3, 9))}  # Slicer 5.6 / 5.8
    assert old["medsam2"] == "medsam2 (SAM2, needs Slicer 5.10 or later)" and old["sam_vit_b"].startswith("sam_vit_b (")
    assert labels["litemedsam"].startswith("litemedsam (LiteMedSAM, ")
    settings = EffectSettings(model="medsam2"), EffectSettings(model=CUSTOM_MODEL), EffectSettings(model="litemedsam")
    assert [setting.family for setting in settings] == [FAMILIES["sam2"], FAMILIES["sam"], FAMILIES["lite"]]


def test_without_a_gpu_the_menu_recommends_the_lite_models_first():
    choices = get_model_choices([], has_gpu=False)
    lite = [name for name, spec in MODELS.items() if spec.family == "lite"]
    assert [choice.name for choice in choices[:len(lite)]] == lite
    assert all(choice.label.endswith("recommended without a GPU)") for choice in choices[:len(lite)])
    assert not any("recommended" in choice.label for choice in get_model_choices([], has_gpu=True))


def test_missing_packages_are_found_without_importing_them(monkeypatch):
    assert is_torch_installed() and get_missing_requirements() == []
    monkeypatch.setitem(PIP_REQUIREMENTS, "medicosam_absent_module", "medicosam-absent")
    assert get_missing_requirements() == ["medicosam-absent"]
    assert get_missing_requirements(remote=True) == []  # the client: Slicer bundles requests
    monkeypatch.setitem(FAMILIES["sam2"].requirements, "medicosam_absent_sam2", "sam2-absent==1.0")
    assert get_missing_requirements(FAMILIES["sam2"]) == ["medicosam-absent", "sam2-absent==1.0"]
    assert get_missing_requirements(FAMILIES["sam2"], remote=True) == []  # the server runs SAM2, not Slicer


def test_sam2_is_refused_on_slicers_before_5_10():
    check_family_supported(FAMILIES["sam"])
    for family in FAMILIES.values():
        family.check_python((3, 10))
    FAMILIES["lite"].check_python((3, 9))
    with pytest.raises(InputError, match=r"Python 3\.10 or later \(Slicer 5\.10 or later\).*Run on: server"):
        FAMILIES["sam2"].check_python((3, 9))


def test_server_settings_come_from_the_application_settings_and_never_the_scene():
    stored = {"MedicoSAM/RunOn": "server", "MedicoSAM/ServerURL": " http://gpu:8765 ", "MedicoSAM/ServerToken": "t",
              "MedicoSAM/RememberToken": "1"}
    server = ServerSettings.from_application_settings(stored.get)
    assert server == ServerSettings("server", "http://gpu:8765", "t", remember_token=True) and server.remote
    assert server.to_application_settings() == {**stored, "MedicoSAM/ServerURL": "http://gpu:8765"}
    assert ServerSettings.from_application_settings({}.get) == ServerSettings()  # qt.QSettings gives None
    assert ServerSettings.from_application_settings({"MedicoSAM/RunOn": "moon"}.get).run_on == "local"
    parameters = EffectSettings(server=server).to_parameters()
    assert not any("Server" in name or "Token" in name or "RunOn" in name for name in parameters)
    assert "t" not in parameters.values()
    with pytest.raises(InputError, match="no server URL"):
        ServerSettings("server").get_url()


def test_the_token_is_stored_only_when_remembered():
    """Slicer.ini is plain text: by default the token lives in the effect for the Slicer session only."""
    session_only = ServerSettings("server", "http://gpu:8765", "secret")
    stored = session_only.to_application_settings()
    assert stored["MedicoSAM/ServerToken"] == "" and stored["MedicoSAM/RememberToken"] == "0"  # a stored one is cleared
    assert "secret" not in stored.values()
    assert ServerSettings.from_application_settings(stored.get) == ServerSettings("server", "http://gpu:8765")
    assert ServerSettings.from_application_settings(stored.get, session_token="secret") == session_only
    remembered = ServerSettings("server", "http://gpu:8765", "secret", remember_token=True)
    assert ServerSettings.from_application_settings(remembered.to_application_settings().get, "other") == remembered
    before = {"MedicoSAM/RunOn": "server", "MedicoSAM/ServerToken": "old"}  # stored before "remember" existed
    assert ServerSettings.from_application_settings(before.get).token == "old"
