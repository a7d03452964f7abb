"""Semantic models: micro-sam decoder weights, 2D / 3D shapes and gradients, position resizing, loss, I/O.

The learning tests on real data are in test_semantic_learning.py; the nnU-Net export and the CLI in
test_semantic_tools.py.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers_models import get_tiny_sam

from medicosam.errors import InputError, ModelError
from medicosam.models.checkpoint import export_sam_with_decoder, load_decoder_state, load_sam
from medicosam.models.config import SamConfig, build_sam, get_tiny_config
from medicosam.models.registry import MODELS
from medicosam_training.semantic import (
    BaselineConfig,
    SemanticPatchDataset,
    SemanticSliceDataset,
    SemanticTrainConfig,
    build_baseline_model,
    get_case,
    get_resized_sam_state,
    get_semantic_loss,
    get_semantic_model,
    load_semantic_model,
    predict_image,
    predict_volume,
    save_semantic_model,
    train_semantic,
)
from medicosam_training.semantic.adapters import ImageEncoder3D
from medicosam_training.unetr import (
    get_decoder_layout,
    get_unetr_decoder,
    get_unetr_decoder_from_state,
)

SIZE = 128  # tiny SAM input size for these tests


def _get_micro_sam_decoder_state(conv_transpose: bool, in_channels: int = 256, features: int = 64,
                                 out_channels: int = 2, seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """A decoder state in micro-sam's key layout, written out from torch-em's UNETR module tree.

    torch-em: `deconvN = Deconv2DBlock(block = [upsampler, SingleConv2DBlock(block=Conv2d), BatchNorm2d,
    ReLU])`, `base` / `decoder.blocks.i` / `decoder_head` = `ConvBlock2d(block = [InstanceNorm2d, Conv2d,
    ReLU, InstanceNorm2d, Conv2d, ReLU])`; upsamplers are `Upsampler2d(conv=Conv2d 1x1)` or
    `SingleDeconv2DBlock(block=ConvTranspose2d(k=2, s=2))`.
    """
    f = [features * 8, features * 4, features * 2, features]
    shapes = OrderedDict()

    def upsampler(prefix, c_in, c_out):
        if conv_transpose:
            shapes[prefix + "block.weight"], shapes[prefix + "block.bias"] = (c_in, c_out, 2, 2), (c_out,)
        else:
            shapes[prefix + "conv.weight"], shapes[prefix + "conv.bias"] = (c_out, c_in, 1, 1), (c_out,)

    def deconv(prefix, c_in, c_out):
        upsampler(prefix + "block.0.", c_in, c_out)
        shapes[prefix + "block.1.block.weight"], shapes[prefix + "block.1.block.bias"] = (c_out, c_out, 3, 3), (c_out,)
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[prefix + "block.2." + name] = (c_out,)
        shapes[prefix + "block.2.num_batches_tracked"] = ()

    def conv_block(prefix, c_in, c_out):
        shapes[prefix + "block.1.weight"], shapes[prefix + "block.1.bias"] = (c_out, c_in, 3, 3), (c_out,)
        shapes[prefix + "block.4.weight"], shapes[prefix + "block.4.bias"] = (c_out, c_out, 3, 3), (c_out,)

    for i, (c_in, c_out) in enumerate(zip([in_channels] + f[:3], f), start=1):
        deconv(f"deconv{i}.", c_in, c_out)
    conv_block("base.", in_channels, f[0])
    for i in range(3):
        conv_block(f"decoder.blocks.{i}.", f[i], f[i + 1])
        upsampler(f"decoder.samplers.{i}.", f[i], f[i + 1])
    upsampler("deconv_out.", features, features)
    conv_block("decoder_head.", 2 * features, features)
    shapes["out_conv.weight"], shapes["out_conv.bias"] = (out_channels, features, 1, 1), (out_channels,)
    generator = torch.Generator().manual_seed(seed)
    return OrderedDict((key, torch.tensor(7) if shape == () else torch.randn(shape, generator=generator) * 0.05)
                       for key, shape in shapes.items())


@pytest.mark.parametrize("conv_transpose", [False, True], ids=["interpolation", "conv-transpose"])
def test_micro_sam_vit_b_decoder_loads_exactly(conv_transpose, tmp_path):
    state = _get_micro_sam_decoder_state(conv_transpose)
    with torch.device("meta"):
        vit_b = build_sam(SamConfig())  # only its neck width matters; no memory is spent on ViT-B
    # the released file is a plain decoder state dict; the joint export nests it under decoder_state
    torch.save(state, tmp_path / "vit_b_medical_imaging_decoder.pt")
    loaded = load_decoder_state(tmp_path / "vit_b_medical_imaging_decoder.pt")
    layout = get_decoder_layout(loaded)
    assert (layout.in_channels, layout.out_channels, layout.initial_features) == (256, 2, 64)
    assert layout.use_conv_transpose is conv_transpose
    decoder = get_unetr_decoder_from_state(vit_b.image_encoder, loaded)
    own = decoder.state_dict()
    assert set(own) == set(state)  # nothing missing, nothing unexpected
    assert all(torch.equal(own[key], state[key]) for key in state)
    out = decoder(torch.randn(1, 256, 2, 2))
    assert out.shape == (1, 2, 32, 32) and torch.isfinite(out).all()
    # a new task keeps everything but the head
    decoder = get_unetr_decoder_from_state(vit_b.image_encoder, loaded, out_channels=5)
    assert decoder.out_conv.out_channels == 5
    assert torch.equal(decoder.base.block[1].weight, state["base.block.1.weight"])


def test_decoder_channel_crop_quirk():
    """torch-em concatenates only the middle half of the skip's channels; the saved weights assume it."""
    decoder = get_unetr_decoder(get_tiny_sam(config=get_tiny_config(SIZE)).image_encoder, 2, 4)
    seen = {}
    decoder.decoder.blocks[0].register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0]))
    features = torch.randn(1, 64, 8, 8)
    decoder(features)
    z9 = decoder.deconv1(features)  # 32 channels; the sampler gives 16, so skip channels 8..23 are used
    torch.testing.assert_close(seen["x"][:, 16:], z9[:, 8:24])


def test_decoder_state_errors_name_the_problem():
    encoder = get_tiny_sam(config=get_tiny_config(SIZE)).image_encoder
    state = _get_micro_sam_decoder_state(False, in_channels=64, features=4)
    del state["decoder.blocks.1.block.4.weight"]
    with pytest.raises(ModelError, match="missing keys: decoder.blocks.1.block.4.weight"):
        get_unetr_decoder_from_state(encoder, state)
    with pytest.raises(ModelError, match="different architectures"):
        get_unetr_decoder_from_state(encoder, _get_micro_sam_decoder_state(False, in_channels=256, features=4))
    with pytest.raises(ModelError, match="lacks 'base.block.1.weight'"):
        get_decoder_layout({"foo": torch.zeros(1)})


def test_registry_decoder_entry_matches_the_loader():
    spec = MODELS["medicosam_vit_b_decoder"]
    assert spec.family is None and MODELS["medicosam_vit_b"].decoder == spec.name


def test_joint_pretrained_decoder_starts_the_semantic_model(tmp_path):
    """e_sem export -> load_sam -> semantic model with that decoder (the trainer's layout fits)."""
    sam = get_tiny_sam(config=get_tiny_config(SIZE))
    joint = get_unetr_decoder(sam.image_encoder, out_channels=2, initial_features=4)
    export_sam_with_decoder(sam, joint.state_dict(), tmp_path / "joint.pt")
    loaded = load_sam(tmp_path / "joint.pt", allow_custom=True)
    same_head = get_semantic_model(loaded.sam, loaded.config, 2, decoder_state=loaded.decoder_state)
    for key, value in joint.state_dict().items():
        assert torch.equal(same_head.decoder.state_dict()[key], value), key
    new_head = get_semantic_model(loaded.sam, loaded.config, 4, decoder_state=loaded.decoder_state)
    assert new_head.config.decoder_features == 4 and new_head.decoder.out_conv.out_channels == 4
    assert torch.equal(new_head.decoder.deconv1.block[0].conv.weight, joint.deconv1.block[0].conv.weight)
    volume_model = get_semantic_model(loaded.sam, loaded.config, 4, 3, decoder_state=loaded.decoder_state,
                                      patch_depth=2)
    assert volume_model.decoder.out_conv is None  # the 3D model ends in its own classifier


def test_2d_and_3d_shapes_and_gradients():
    sam = get_tiny_sam(config=get_tiny_config(SIZE))
    config = get_tiny_config(SIZE)
    model_2d = get_semantic_model(sam, config, 3, 2, decoder_features=4)
    images = torch.rand(2, 3, SIZE, SIZE) * 255
    assert model_2d(images).shape == (2, 3, SIZE, SIZE)
    with pytest.raises(InputError, match="get_model_input"):
        model_2d(images[..., :64])
    model_3d = get_semantic_model(sam, config, 3, 3, decoder_features=4, fusion_channels=4, patch_depth=3)
    volumes = torch.rand(2, 3, 3, SIZE, SIZE) * 255
    logits = model_3d(volumes)
    assert logits.shape == (2, 3, 3, SIZE, SIZE)
    F.cross_entropy(logits, torch.randint(0, 3, (2, 3, SIZE, SIZE))).backward()
    named = dict(model_3d.named_parameters())
    adapters = [name for name in named if ".adapter" in name]
    assert len(adapters) == 2 * config.encoder_depth * 6  # norm (2), down, conv (2), up per adapter
    for name in adapters + [name for name in named if name.startswith(("decoder.", "fusion_3d.", "classifier."))]:
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name
    # the source SAM is copied, not trained in place
    assert all(p.grad is None for p in sam.parameters())


def test_adapters_keep_sam_weights_and_computation():
    """The 3D encoder holds SAM's keys unchanged; with silent adapters it is SAM slice by slice."""
    sam = get_tiny_sam(config=get_tiny_config(SIZE))
    encoder = ImageEncoder3D(build_sam(get_tiny_config(SIZE)).image_encoder, zero_init=True)
    missing, unexpected = encoder.load_state_dict(sam.image_encoder.state_dict(), strict=False)
    assert not unexpected and missing and all(".adapter" in key for key in missing)
    slices = torch.randn(4, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(encoder(slices, depth=2), sam.image_encoder(slices))
        random_adapters = ImageEncoder3D(build_sam(get_tiny_config(SIZE)).image_encoder)  # the paper's init
        random_adapters.load_state_dict(sam.image_encoder.state_dict(), strict=False)
        assert not torch.allclose(random_adapters(slices, depth=2), sam.image_encoder(slices))


def test_resizing_to_the_same_size_is_the_identity():
    config = get_tiny_config(256)
    sam = get_tiny_sam(config=config)
    state = sam.state_dict()
    resized, new_config = get_resized_sam_state(state, config, 256)
    assert new_config == config and all(resized[key] is state[key] for key in state)
    torch.manual_seed(1)
    plain = get_semantic_model(sam, config, 3, 3, decoder_features=4, patch_depth=2)
    torch.manual_seed(1)
    same_size = get_semantic_model(sam, config, 3, 3, image_size=256, decoder_features=4, patch_depth=2)
    volumes = torch.rand(1, 3, 2, 256, 256) * 255
    with torch.no_grad():
        assert torch.equal(plain.eval()(volumes), same_size.eval()(volumes))


def test_smaller_model_gets_interpolated_positions():
    """A 128-px model from a 256-px checkpoint: pos_embed and global rel_pos are resized, not zeroed."""
    config = get_tiny_config(256)  # grid 16, windows of 8, block 1 global
    sam = get_tiny_sam(config=config)
    with torch.no_grad():
        sam.image_encoder.pos_embed.normal_()
        for block in sam.image_encoder.blocks:
            block.attn.rel_pos_h.normal_()
            block.attn.rel_pos_w.normal_()
    model = get_semantic_model(sam, config, 3, 3, image_size=128, decoder_features=4, patch_depth=2)
    assert model.config.sam == dataclasses.replace(config, image_size=128)
    pos = model.image_encoder.pos_embed
    expected = F.interpolate(sam.image_encoder.pos_embed.permute(0, 3, 1, 2), size=(8, 8), mode="bicubic",
                             align_corners=False, antialias=True).permute(0, 2, 3, 1)
    assert pos.shape == (1, 8, 8, 64) and pos.abs().sum() > 0
    torch.testing.assert_close(pos, expected)
    global_attn, window_attn = model.image_encoder.blocks[1].attn, model.image_encoder.blocks[0].attn
    assert global_attn.rel_pos_h.shape[0] == 15 and global_attn.rel_pos_h.abs().sum() > 0
    assert torch.equal(window_attn.rel_pos_h, sam.image_encoder.blocks[0].attn.rel_pos_h)  # windows keep theirs
    # segment_anything resizes a mismatched table the same way at run time: same attention output
    original = sam.image_encoder.blocks[1].attn
    reference = type(global_attn)(64, num_heads=4, qkv_bias=True, use_rel_pos=True, input_size=(8, 8))
    reference.load_state_dict(global_attn.state_dict())
    reference.rel_pos_h, reference.rel_pos_w = original.rel_pos_h, original.rel_pos_w  # 31-long tables
    tokens = torch.randn(1, 8, 8, 64)
    with torch.no_grad():
        torch.testing.assert_close(global_attn(tokens), reference(tokens))


def test_vit_b_1024_to_512_shapes():
    state = {"image_encoder.pos_embed": torch.randn(1, 64, 64, 768)}
    for i in range(12):
        length = 127 if i in (2, 5, 8, 11) else 27
        state[f"image_encoder.blocks.{i}.attn.rel_pos_h"] = torch.randn(length, 64)
    resized, config = get_resized_sam_state(state, SamConfig(), 512)
    assert config.image_size == 512 and resized["image_encoder.pos_embed"].shape == (1, 32, 32, 768)
    assert resized["image_encoder.blocks.11.attn.rel_pos_h"].shape == (63, 64)
    assert resized["image_encoder.blocks.10.attn.rel_pos_h"] is state["image_encoder.blocks.10.attn.rel_pos_h"]


def test_loss_is_cross_entropy_plus_softmax_dice_on_the_same_logits():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=generator)
    target = torch.randint(0, 3, (2, 1, 8, 8), generator=generator)
    torch.testing.assert_close(get_semantic_loss(0.0)(logits, target), F.cross_entropy(logits, target[:, 0]))
    probabilities = logits.softmax(1)
    one_hot = F.one_hot(target[:, 0], 3).permute(0, 3, 1, 2).float()
    dims = (0, 2, 3)  # over the whole batch, per class
    dice = (2 * (probabilities * one_hot).sum(dims) + 1e-5) / (probabilities.sum(dims) + one_hot.sum(dims) + 1e-5)
    torch.testing.assert_close(get_semantic_loss(1.0)(logits, target), 1 - dice.mean())


def test_whole_image_and_volume_inference(icbm152):
    t1, labels = icbm152["t1"][30:42], (icbm152["gm"] + 2 * icbm152["wm"])[30:42].astype(np.int64)
    sam = get_tiny_sam(config=get_tiny_config(SIZE))
    model_2d = get_semantic_model(sam, get_tiny_config(SIZE), 3, 2, decoder_features=4)
    assert predict_image(model_2d, t1[0]).shape == t1[0].shape
    prediction = predict_volume(model_2d, t1, axis=1)
    assert prediction.shape == t1.shape and prediction.max() < 3
    model_3d = get_semantic_model(sam, get_tiny_config(SIZE), 3, 3, decoder_features=4, patch_depth=16)
    assert predict_volume(model_3d, t1).shape == t1.shape  # 12 slices: shorter than one window
    # datasets give what the models take
    case = get_case(t1, labels, "icbm")
    item = SemanticPatchDataset([case], SIZE, patch_depth=16)[0]
    assert item["image"].shape == (3, 16, SIZE, SIZE) and item["labels"].shape == (16, SIZE, SIZE)
    assert item["labels"][12:].max() == 0  # padded slices are background
    item = SemanticSliceDataset([case], SIZE)[3]
    assert item["image"].shape == (3, SIZE, SIZE) and set(item["labels"].unique().tolist()) <= {0, 1, 2}


@pytest.mark.parametrize("ndim", [2, 3])
def test_checkpoint_roundtrip(ndim, tmp_path):
    sam = get_tiny_sam(config=get_tiny_config(SIZE))
    model = get_semantic_model(sam, get_tiny_config(SIZE), 3, ndim, decoder_features=4, patch_depth=2).eval()
    path = save_semantic_model(model, tmp_path / "model.pt")
    restored = load_semantic_model(path)
    images = torch.rand(1, 3, *((2,) if ndim == 3 else ()), SIZE, SIZE) * 255
    with torch.no_grad():
        assert torch.equal(model(images), restored(images))
    assert restored.config == model.config


@pytest.mark.parametrize(("architecture", "ndim", "patch_depth"), [("unet", 2, 1), ("unet", 3, 8),
                                                                   ("swin_unetr", 2, 1)])
def test_baselines_train_and_roundtrip(architecture, ndim, patch_depth, icbm152, tmp_path):
    config = BaselineConfig(architecture, ndim, 3, 64, patch_depth=patch_depth, features=12)
    model = build_baseline_model(config)
    case = get_case(icbm152["t1"][30:40], (icbm152["gm"] + 2 * icbm152["wm"])[30:40].astype(np.int64), "icbm")
    dataset = SemanticSliceDataset([case], 64) if ndim == 2 else SemanticPatchDataset([case], 64, patch_depth)
    result = train_semantic(model, dataset, dataset, SemanticTrainConfig(iterations=2, batch_size=2, val_every=2,
                                                                         device="cpu", progress=False,
                                                                         out_dir=tmp_path))
    assert result.best_path.is_file() and np.isfinite(result.history[-1]["val_loss"])
    restored = load_semantic_model(result.best_path)
    assert predict_volume(restored, case.image).shape == case.image.shape


def test_baseline_sizes_are_checked():
    with pytest.raises(InputError, match="multiples of 32"):
        BaselineConfig("swin_unetr", 3, 3, 64, patch_depth=16)
    with pytest.raises(InputError, match="multiple of 12"):
        BaselineConfig("swin_unetr", 2, 3, 64, features=16)
