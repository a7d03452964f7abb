"""The fast path (SDPA attention, autocast, compile, batched and half-precision embeddings) equals
the official segment_anything path, keeps the state dict, and leaves the model as it was found:
predictors of both speeds share one model without changing each other's masks."""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import pytest
import torch
from segment_anything.modeling.image_encoder import Attention as EncoderAttention
from segment_anything.modeling.transformer import Attention as DecoderAttention

from medicosam.acceleration import (
    AccelerationConfig,
    FastDecoderAttention,
    FastEncoderAttention,
    compile_encoder,
    fast_attention,
    get_autocast,
    get_dtype,
    is_compiled,
    is_fast_attention,
)
from medicosam.device import get_autocast_dtype, has_fast_cpu_bf16
from medicosam.embedding_cache import EmbeddingCache
from medicosam.errors import InputError
from medicosam.models.config import SamConfig, build_sam, get_tiny_config
from medicosam.predictor import VolumePredictor
from medicosam.prompts import Prompts, get_center_point
from medicosam.prompts import get_largest_component as largest_component
from medicosam.propagation import PropagationConfig

#: ViT-b's block (768 dims, 12 heads of 64, window 14) on a 256 px input: the 16 x 16 grid pads to
#: 28 x 28 for the windowed block and the global block's rel-pos table covers the full grid.
VIT_B_BLOCKS = SamConfig(image_size=256, encoder_depth=2, encoder_global_attn_indexes=(1,))
#: A window that does not divide the grid (16 -> padded to 18), 4 heads.
PADDED_WINDOW = SamConfig(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=4,
                          encoder_global_attn_indexes=(1,), image_size=256, window_size=6,
                          prompt_embed_dim=64, decoder_mlp_dim=256, iou_head_hidden_dim=64)


def _get_sam(config: SamConfig, seed: int = 0):
    """A real Sam with random weights and non-zero rel-pos tables (zero in a fresh SAM)."""
    torch.manual_seed(seed)
    sam = build_sam(config)
    with torch.no_grad():
        for name, parameter in sam.named_parameters():
            if "rel_pos" in name:
                parameter.normal_(0.0, 0.5)
    return sam


def _get_attention_input(block, batch: int = 2) -> torch.Tensor:
    """Tokens shaped as the block's attention sees them: (B, H, W, C) windows or the full grid."""
    side = block.window_size or block.attn.rel_pos_h.shape[0] // 2 + 1
    return torch.randn(batch, side, side, block.attn.qkv.in_features, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("config", [VIT_B_BLOCKS, PADDED_WINDOW, get_tiny_config()], ids=["vit_b", "padded", "tiny"])
def test_fast_attention_equals_official_for_windowed_and_global_blocks(config):
    sam = _get_sam(config)
    blocks = sam.image_encoder.blocks
    assert blocks[0].window_size > 0 and blocks[1].window_size == 0  # one windowed, one global block
    inputs = [_get_attention_input(block) for block in blocks]
    image = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        official = [block.attn(x) for block, x in zip(blocks, inputs)] + [sam.image_encoder(image)]
        with fast_attention(sam):
            assert all(type(block.attn) is FastEncoderAttention for block in blocks)
            fast = [block.attn(x) for block, x in zip(blocks, inputs)] + [sam.image_encoder(image)]
    for ours, reference in zip(fast, official):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


def test_fast_attention_gradients_equal_official():
    """Training through the fast path: same gradients for the rel-pos tables and the projections."""
    sam = _get_sam(get_tiny_config())
    fast = copy.deepcopy(sam)
    image = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    sam.image_encoder(image).square().mean().backward()
    with fast_attention(fast):
        fast.image_encoder(image).square().mean().backward()
    reference = dict(sam.image_encoder.named_parameters())
    for name, parameter in fast.image_encoder.named_parameters():
        torch.testing.assert_close(parameter.grad, reference[name].grad, rtol=1e-3, atol=1e-6, msg=name)


def test_fast_decoder_attention_equals_official(tiny_sam):
    generator = torch.Generator().manual_seed(4)
    embedding = torch.randn(2, 64, 16, 16, generator=generator)
    points = (torch.rand(2, 3, 2, generator=generator) * 256, torch.tensor([[1, 0, 1], [1, 1, -1]]))

    def decode():
        sparse, dense = tiny_sam.prompt_encoder(points=points, boxes=None, masks=None)
        return tiny_sam.mask_decoder(image_embeddings=embedding[:1], image_pe=tiny_sam.prompt_encoder.get_dense_pe(),
                                     sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                     multimask_output=True)

    with torch.no_grad():
        official = decode()
        with fast_attention(tiny_sam.mask_decoder):
            assert any(type(m) is FastDecoderAttention for m in tiny_sam.mask_decoder.modules())
            fast = decode()
    for ours, reference in zip(fast, official):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


def _get_attention_classes(model) -> list:
    return [type(m) for m in model.modules() if isinstance(m, (EncoderAttention, DecoderAttention))]


def test_fast_attention_keeps_the_state_dict_and_puts_back_what_it_found(tiny_sam):
    before = {key: value.clone() for key, value in tiny_sam.state_dict().items()}
    official = _get_attention_classes(tiny_sam)
    assert set(official) == {EncoderAttention, DecoderAttention}
    with fast_attention(tiny_sam):
        assert set(_get_attention_classes(tiny_sam)) == {FastEncoderAttention, FastDecoderAttention}
        after = tiny_sam.state_dict()
        assert list(after) == list(before)  # still a plain SAM checkpoint
        assert all(torch.equal(after[key], before[key]) for key in before)
        build_sam(get_tiny_config()).load_state_dict(after)  # strict load into an official model
        with fast_attention(tiny_sam.image_encoder, enabled=False):  # a reference call inside a fast block
            assert not is_fast_attention(tiny_sam.image_encoder) and is_fast_attention(tiny_sam.mask_decoder)
        assert set(_get_attention_classes(tiny_sam)) == {FastEncoderAttention, FastDecoderAttention}
    assert _get_attention_classes(tiny_sam) == official
    with pytest.raises(RuntimeError, match="inside"), fast_attention(tiny_sam):
        raise RuntimeError("inside")
    assert _get_attention_classes(tiny_sam) == official  # put back after an error too


def test_compiled_encoder_keeps_the_state_dict(tiny_sam):
    before = list(tiny_sam.state_dict())
    compile_encoder(tiny_sam)  # compiles lazily: nothing runs here
    compile_encoder(tiny_sam)  # idempotent
    assert is_compiled(tiny_sam) and not is_fast_attention(tiny_sam)  # compiling keeps official attention
    assert list(tiny_sam.state_dict()) == before  # no "_orig_mod." prefix


def test_model_with_fast_path_deep_copies_and_pickles(tiny_sam):
    import pickle

    with fast_attention(tiny_sam):
        for clone in (copy.deepcopy(tiny_sam), pickle.loads(pickle.dumps(tiny_sam))):
            assert is_fast_attention(clone)
            assert clone.state_dict().keys() == tiny_sam.state_dict().keys()


def test_autocast_and_dtype_choices():
    assert get_autocast_dtype("cpu") == (torch.bfloat16 if has_fast_cpu_bf16() else None)  # "auto"
    assert get_autocast_dtype("cuda", "none") is None
    assert isinstance(get_autocast("cpu", "none"), contextlib.nullcontext)
    with get_autocast("cpu", "bfloat16"):
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.bfloat16
    assert get_dtype("float16") is torch.float16 and get_dtype(None) is None
    with pytest.raises(InputError, match="unknown floating dtype"):
        get_dtype("int8")
    with pytest.raises(InputError, match="unknown autocast"):
        AccelerationConfig(autocast="fp8")


@pytest.fixture
def white_matter_slice(icbm152):
    index = int(np.argmax(icbm152["wm"].sum(axis=(1, 2))))
    return index, largest_component(icbm152["wm"][index])


def _get_point_prompts(mask: np.ndarray, n: int = 6):
    rows, cols = np.nonzero(mask)
    picks = np.random.default_rng(0).choice(len(rows), n, replace=False)
    return [Prompts(points=np.array([[cols[i], rows[i]]], np.float32), labels=np.array([1])) for i in picks]


@pytest.mark.parametrize("config, cache_dtype, min_iou", [
    (AccelerationConfig(autocast="none"), None, 0.995),  # SDPA in fp32: a few boundary pixels at most
    (AccelerationConfig(autocast="bfloat16"), "bfloat16", 0.98),  # bf16 encoder and bf16 cache
])
def test_fast_predictor_masks_match_reference_on_real_slice(icbm152, white_matter_slice, config, cache_dtype,
                                                            min_iou):
    index, mask = white_matter_slice
    sam = _get_sam(get_tiny_config())
    reference = VolumePredictor(sam, icbm152["t1"], model_id="tiny")
    fast = VolumePredictor(sam, icbm152["t1"], model_id="tiny", acceleration=config, cache_dtype=cache_dtype)
    prompts = _get_point_prompts(mask) + [Prompts(points=get_center_point(mask)[None], labels=np.array([1]),
                                                  box=np.array([10, 20, 80, 90], np.float32))]
    expected = reference.predict(0, index, prompts).masks
    got = fast.predict(0, index, prompts).masks
    assert not is_fast_attention(sam)  # each call switched and put back
    for ours, theirs in zip(got, expected):
        assert theirs.any()
        assert np.count_nonzero(ours & theirs) / np.count_nonzero(ours | theirs) >= min_iou


def test_half_precision_cache_halves_memory(tiny_sam, icbm152):
    full = VolumePredictor(tiny_sam, icbm152["t1"]).get_embedding(0, 40)
    half = VolumePredictor(tiny_sam, icbm152["t1"], cache_dtype="bfloat16").get_embedding(0, 40)
    assert half.features.dtype == torch.bfloat16 and 2 * half.nbytes == full.nbytes
    torch.testing.assert_close(half.features.float(), full.features, rtol=1e-2, atol=1e-2)


def test_batched_embeddings_equal_single_ones_and_are_computed_once(tiny_sam, icbm152):
    single = VolumePredictor(tiny_sam, icbm152["t1"])
    batched = VolumePredictor(tiny_sam, icbm152["t1"])
    batched.get_embedding(0, 31)  # already cached: not recomputed by the batch
    embeddings = batched.get_embeddings(0, [30, 31, 32, 33, 34, 30], batch_size=2)
    assert (batched.encoder_calls, batched.encoded_slices) == (1 + 2, 1 + 4)
    assert embeddings[0] is embeddings[-1]
    for index, embedding in zip([30, 31, 32, 33, 34], embeddings):
        assert embedding.features.shape == (1, 64, 16, 16)
        torch.testing.assert_close(embedding.features, single.get_embedding(0, index).features, rtol=1e-4, atol=1e-5)
    batched.get_embeddings(0, [30, 34])
    assert batched.encoder_calls == 3 and len(batched.cache) == 5
    with pytest.raises(InputError, match="batch_size must be at least 1"):
        batched.get_embeddings(0, [1], batch_size=0)


def test_propagation_lookahead_batches_encoder_calls(tiny_sam, icbm152, white_matter_slice):
    index, mask = white_matter_slice
    config = PropagationConfig(iou_threshold=0.0, max_slices=6)
    plain = VolumePredictor(tiny_sam, icbm152["t1"])
    ahead = VolumePredictor(tiny_sam, icbm152["t1"])
    expected = plain.propagate(0, {index: mask}, config, lookahead=1)
    result = ahead.propagate(0, {index: mask}, config, lookahead=4)
    assert sorted(result.masks) == sorted(expected.masks) == list(range(index - 6, index + 7))
    assert plain.encoder_calls == 12 and ahead.encoder_calls == 4  # 6 slices per side in 4 + 4
    assert ahead.encoded_slices == 16  # at most lookahead - 1 extra per side
    for i, theirs in expected.masks.items():
        ours = result.masks[i]
        assert np.count_nonzero(ours & theirs) / max(np.count_nonzero(ours | theirs), 1) >= 0.98


def test_fast_switch_on_one_loaded_model_keeps_paths_and_cache_entries_apart(icbm152, tmp_path):
    from medicosam.models.checkpoint import export_sam, load_sam

    export_sam(_get_sam(get_tiny_config()), tmp_path / "tiny.pt")
    loaded = load_sam(str(tmp_path / "tiny.pt"), allow_custom=True)
    cache = EmbeddingCache()
    fast = VolumePredictor.from_loaded(loaded, icbm152["t1"], fast=True, volume_id="v", cache=cache)
    assert fast.get_embedding(0, 40).features.dtype == torch.bfloat16
    reference = VolumePredictor.from_loaded(loaded, icbm152["t1"], volume_id="v", cache=cache)
    assert reference.get_embedding(0, 40).features.dtype == torch.float32  # not the fast entry
    assert (fast.encoder_calls, reference.encoder_calls) == (1, 1) and len(cache) == 2


def test_predictors_of_both_speeds_on_one_model_give_their_own_masks_in_any_order(icbm152, white_matter_slice):
    """Two predictors (fast, reference) on ONE model: each one's masks equal those it gives alone."""
    index, mask = white_matter_slice
    prompts = _get_point_prompts(mask, n=3) + [Prompts(points=get_center_point(mask)[None], labels=np.array([1]),
                                                       box=np.array([10, 20, 80, 90], np.float32))]
    speeds = {"fast": dict(acceleration=AccelerationConfig(autocast="bfloat16"), cache_dtype="bfloat16"),
              "reference": {}}
    sam = _get_sam(get_tiny_config())

    def get_predictor(model, speed):
        return VolumePredictor(model, icbm152["t1"], model_id="tiny", cache=EmbeddingCache(), **speeds[speed])

    alone = {speed: get_predictor(copy.deepcopy(sam), speed).predict(0, index, prompts) for speed in speeds}
    assert not np.array_equal(alone["fast"].logits, alone["reference"].logits)  # the two paths really differ
    for order in (("fast", "reference", "fast"), ("reference", "fast", "reference")):
        shared = {speed: get_predictor(sam, speed) for speed in speeds}  # both made before either predicts
        for speed in order:
            result = shared[speed].predict(0, index, prompts)
            np.testing.assert_array_equal(result.masks, alone[speed].masks)
            np.testing.assert_array_equal(result.logits, alone[speed].logits)
            assert not is_fast_attention(sam)
