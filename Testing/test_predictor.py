"""The predictor equals segment_anything.SamPredictor, batches objects, and caches embeddings once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from medicosam.embedding_cache import EmbeddingCache
from medicosam.errors import InputError
from medicosam.predictor import VolumePredictor, get_mask_logits
from medicosam.prompts import Prompts


def _prompts(points=(), labels=(), box=None):
    return Prompts(points=np.asarray(points, dtype=np.float32).reshape(-1, 2),
                   labels=np.asarray(labels, dtype=np.int64), box=None if box is None else np.asarray(box, np.float32))


@pytest.fixture
def predictor(tiny_sam, icbm152):
    return VolumePredictor(tiny_sam, icbm152["t1"], model_id="tiny")


@pytest.mark.parametrize("axis", [0, 2])
def test_masks_equal_official_sam_predictor(predictor, tiny_sam, axis):
    index = predictor.volume.shape[axis] // 2
    official = SamPredictor(tiny_sam)
    official.set_image(predictor.window.apply(predictor.get_slice(axis, index)))
    cases = [
        dict(points=[[40, 50]], labels=[1]),
        dict(points=[[40, 50], [60, 30]], labels=[1, 0]),
        dict(box=[20, 25, 70, 80]),
        dict(points=[[40, 50]], labels=[1], box=[20, 25, 70, 80]),
    ]
    for case in cases:
        ours = predictor.predict(axis, index, _prompts(**case))
        multimask = len(case.get("labels", [])) == 1 and "box" not in case
        masks, scores, logits = official.predict(
            point_coords=np.asarray(case["points"], float) if "points" in case else None,
            point_labels=np.asarray(case["labels"]) if "labels" in case else None,
            box=np.asarray(case["box"], float) if "box" in case else None, multimask_output=multimask)
        best = int(np.argmax(scores))
        np.testing.assert_array_equal(ours.masks[0], masks[best])
        np.testing.assert_allclose(ours.scores[0], scores[best], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ours.logits[0], logits[best], rtol=1e-4, atol=1e-4)


def test_several_objects_in_one_call_equal_one_by_one(predictor):
    objects = [_prompts([[30 + i, 40], [50, 60 - i]], [1, 0]) for i in range(5)]  # two decoder calls of 4 and 1
    objects.append(_prompts([[70, 20], [10, 10]], [1, 1]))
    assert predictor.decode_batch == 4
    together = predictor.predict(0, 40, objects)
    for i, prompt in enumerate(objects):
        alone = predictor.predict(0, 40, prompt)
        np.testing.assert_array_equal(together.masks[i], alone.masks[0])
        np.testing.assert_allclose(together.scores[i], alone.scores[0], rtol=1e-5)
    assert predictor.encoder_calls == 1


def test_previous_logits_and_projected_mask_are_accepted(predictor):
    first = predictor.predict(0, 40, _prompts([[40, 50]], [1]))
    refined = predictor.predict(0, 40, Prompts(points=np.array([[40, 50], [20, 20]], np.float32),
                                               labels=np.array([1, 0]), logits=first.logits[0]))
    assert refined.masks.shape == first.masks.shape
    mask = np.zeros(predictor.volume.shape[1:], bool)
    mask[40:70, 30:60] = True
    logits = get_mask_logits(mask, predictor.low_res_size)
    assert logits.shape == (64, 64) and logits.max() > 6 and logits.min() < -6
    projected = predictor.predict(0, 41, Prompts(points=np.zeros((0, 2), np.float32),
                                                 labels=np.zeros(0, np.int64), box=np.array([30, 40, 60, 70]),
                                                 mask=mask))
    assert projected.masks.shape == (1,) + mask.shape


def test_embedding_computed_once_per_slice(predictor):
    for _ in range(3):
        for index in (10, 11, 12):
            predictor.predict(0, index, _prompts([[30, 30]], [1]))
    predictor.predict(1, 10, _prompts([[30, 30]], [1]))
    assert predictor.encoder_calls == 4
    assert predictor.cache.misses == 4 and predictor.cache.hits == 6


def test_cache_never_exceeds_its_cap(tiny_sam, icbm152):
    one = VolumePredictor(tiny_sam, icbm152["t1"]).get_embedding(0, 5).nbytes
    cache = EmbeddingCache(max_bytes=3 * one + one // 2)
    predictor = VolumePredictor(tiny_sam, icbm152["t1"], cache=cache)
    for index in range(6):
        predictor.get_embedding(0, index)
        assert cache.nbytes <= cache.max_bytes
    assert len(cache) == 3
    predictor.get_embedding(0, 5)  # most recent: still cached
    assert predictor.encoder_calls == 6
    predictor.get_embedding(0, 0)  # evicted: computed again
    assert predictor.encoder_calls == 7
    with pytest.raises(InputError, match="max_bytes must be positive"):
        EmbeddingCache(max_bytes=0)


def test_cache_shared_between_predictors_keys_on_volume_model_and_window(tiny_sam, icbm152):
    cache = EmbeddingCache()
    a = VolumePredictor(tiny_sam, icbm152["t1"], cache=cache, volume_id="v", model_id="m")
    b = VolumePredictor(tiny_sam, icbm152["t1"], cache=cache, volume_id="v", model_id="m")
    c = VolumePredictor(tiny_sam, icbm152["t1"], cache=cache, volume_id="v", model_id="other")
    a.get_embedding(0, 3)
    b.get_embedding(0, 3)
    c.get_embedding(0, 3)
    assert (a.encoder_calls, b.encoder_calls, c.encoder_calls) == (1, 0, 1)


@pytest.mark.parametrize("case, message", [
    (dict(points=[[500, 10]], labels=[1]), "outside"),
    (dict(box=[30, 30, 30, 60]), "empty box"),
    (dict(), "at least one point or a box"),
])
def test_bad_prompts_have_clear_errors(predictor, case, message):
    with pytest.raises(InputError, match=message):
        predictor.predict(0, 10, _prompts(**case))


def test_negative_only_prompt_warns(predictor, caplog):
    with caplog.at_level("WARNING", logger="medicosam.predictor"):
        predictor.predict(0, 10, _prompts([[20, 20]], [0]))
    assert "negative points only" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="medicosam.predictor"):
        predictor.predict(0, 10, _prompts([[20, 20], [30, 30]], [0, 1]))
    assert caplog.text == ""


def test_slice_outside_volume_is_refused(predictor):
    with pytest.raises(InputError, match="outside the volume"):
        predictor.predict(0, 10_000, _prompts([[1, 1]], [1]))


def test_single_image_is_a_one_slice_volume(tiny_sam, icbm152):
    image = icbm152["t1"][40]
    prediction = VolumePredictor(tiny_sam, image).predict(0, 0, _prompts([[30, 30]], [1]))
    assert prediction.masks.shape == (1,) + image.shape
    assert torch.is_tensor(VolumePredictor(tiny_sam, image).get_embedding(0, 0).features)


def test_colour_images_keep_their_colours(tiny_sam):
    from medicosam.volume_io import read_volume
    from medicosam_training.sample_data import get_itk_examples_dir

    volume = read_volume(get_itk_examples_dir() / "VentricleModel.png")  # a real RGB PNG: (1, H, W, 3)
    rgb = volume.array.copy()
    rgb[..., 1] //= 2  # make the channels differ, so grey and colour inputs differ
    assert rgb.ndim == 4 and rgb.shape[-1] == 3
    predictor = VolumePredictor(tiny_sam, rgb)
    official = SamPredictor(tiny_sam)
    official.set_image(rgb[0])
    point = np.array([[rgb.shape[2] // 2, rgb.shape[1] // 2]], np.float32)
    masks, scores, _ = official.predict(point_coords=point, point_labels=np.array([1]), multimask_output=True)
    np.testing.assert_array_equal(predictor.predict(0, 0, _prompts(point, [1])).masks[0], masks[np.argmax(scores)])
    with pytest.raises(Exception, match="colour volume"):
        VolumePredictor(tiny_sam, np.zeros((2, 8, 8, 4)))
