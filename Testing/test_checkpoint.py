"""Checkpoint loading, compatibility errors and export, with real segment_anything models."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
import xxhash
from helpers_models import (
    RunsCommandWhenUnpickled,
    assert_same_state,
    get_mask_decoder_outputs,
    get_sam_med2d_state,
    get_tiny_sam,
    get_torch_em_checkpoint,
    get_unetr_decoder_state,
    write_torch_em_trainer_checkpoint,
)
from http_server import FileServer, Route
from segment_anything import sam_model_registry

from medicosam.errors import InputError, MedicoSAMError, ModelError
from medicosam.models.checkpoint import (
    check_sam_state,
    export_sam,
    export_sam_with_decoder,
    get_sam_state_dict,
    load_checkpoint_file,
    load_decoder_state,
    load_sam,
)
from medicosam.models.config import OFFICIAL_CONFIGS, SamConfig, build_sam, get_tiny_config


@pytest.fixture(scope="module")
def tiny_sam():
    return get_tiny_sam()


def test_export_loads_in_segment_anything_unchanged(tmp_path):
    torch.manual_seed(1)
    ours = build_sam(OFFICIAL_CONFIGS["vit_b"])
    # A DDP-style wrapper: export must strip `module.` and write plain keys.
    path = export_sam({"module." + k: v for k, v in ours.state_dict().items()}, tmp_path / "vit_b.pth")
    theirs = sam_model_registry["vit_b"](checkpoint=str(path))
    assert_same_state(ours.state_dict(), theirs.state_dict())
    for a, b in zip(get_mask_decoder_outputs(ours), get_mask_decoder_outputs(theirs)):
        assert torch.equal(a, b)
    assert check_sam_state(load_checkpoint_file(path)).arch == "vit_b"


@pytest.mark.parametrize("prefix", ["", "sam.", "module.", "module.sam."])
@pytest.mark.parametrize("wrapper", [None, "model_state", "state_dict"])
def test_every_layout_unwraps_to_plain_keys(tiny_sam, prefix, wrapper):
    state = {prefix + k: v for k, v in tiny_sam.state_dict().items()}
    obj = {wrapper: state, "epoch": 3} if wrapper else state
    sam_state, decoder = get_sam_state_dict(obj)
    assert_same_state(sam_state, tiny_sam.state_dict())
    assert decoder is None


def test_tiny_round_trip_through_micro_sam_layouts(tiny_sam, tmp_path):
    decoder = get_unetr_decoder_state()
    path = tmp_path / "torch_em.pt"
    torch.save(get_torch_em_checkpoint(tiny_sam.state_dict(), decoder), path)
    loaded = load_sam(path, allow_custom=True)
    assert loaded.config == get_tiny_config() and loaded.source == str(path)
    assert loaded.model_id == xxhash.xxh128(path.read_bytes()).hexdigest()[:16]
    assert_same_state(loaded.sam.state_dict(), tiny_sam.state_dict())
    assert_same_state(loaded.decoder_state, decoder)
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.sam.image_encoder(image), tiny_sam.image_encoder(image))
    for a, b in zip(get_mask_decoder_outputs(loaded.sam), get_mask_decoder_outputs(tiny_sam)):
        assert torch.equal(a, b)

    joint = export_sam_with_decoder(loaded.sam, loaded.decoder_state, tmp_path / "joint.pt")
    raw = torch.load(joint, weights_only=True)
    assert set(raw) == {"model_state", "decoder_state", "medicosam"}
    assert raw["medicosam"]["decoder_out_channels"] == 4  # the fixture's out_conv has 4 rows
    assert "get_unetr(predictor.model.image_encoder, state['decoder_state'], out_channels=4)" in \
        raw["medicosam"]["load_decoder_with"]
    assert_same_state(raw["model_state"], tiny_sam.state_dict())  # plain keys, no prefixes
    assert_same_state(load_decoder_state(joint), decoder)
    assert_same_state(load_sam(joint, allow_custom=True).decoder_state, decoder)
    plain = export_sam(loaded.sam, tmp_path / "plain.pt")
    assert_same_state(torch.load(plain, weights_only=True), tiny_sam.state_dict())
    torch.save({"model_state": tiny_sam.state_dict()}, tmp_path / "sam_only.pt")
    with pytest.raises(ModelError, match="no decoder_state"):
        load_decoder_state(tmp_path / "sam_only.pt")


def test_released_decoder_file_loads_as_decoder_not_as_sam(tmp_path):
    path = tmp_path / "decoder.pt"
    torch.save(get_unetr_decoder_state(), path)
    assert_same_state(load_decoder_state(path), get_unetr_decoder_state())
    with pytest.raises(ModelError, match="holds no SAM weights.*load_decoder_state"):
        load_sam(path, allow_custom=True)


def test_sam_med2d_adapters_are_named(tiny_sam, tmp_path):
    path = tmp_path / "sam_med2d.pth"
    torch.save(get_sam_med2d_state(tiny_sam), path)
    with pytest.raises(ModelError) as error:
        load_sam(path, allow_custom=True)
    message = str(error.value)
    assert str(path) in message and "SAM-Med2D" in message
    assert "image_encoder.blocks.N.Adapter.channel.N.weight (x4)" in message
    assert "non-official" not in message  # allow_custom: the size is fine, the adapters are not


def test_256_px_checkpoint_needs_allow_custom_unless_medicosam_wrote_it(tiny_sam, tmp_path):
    foreign = tmp_path / "foreign.pth"
    torch.save(tiny_sam.state_dict(), foreign)  # a plain state dict from any other tool
    expected = (r"image_size 256 \(vit_b: 1024\).*in a file MedicoSAM did not write: segment_anything."
                r"sam_model_registry cannot load it; if you trust it, pass --allow-custom")
    with pytest.raises(ModelError, match=expected):
        load_sam(foreign)
    assert load_sam(foreign, allow_custom=True).config.image_size == 256
    # MedicoSAM's own files: the export (the demo's and the trainer's model.pt), the joint export.
    plain = export_sam(tiny_sam, tmp_path / "tiny.pth")
    joint = export_sam_with_decoder(tiny_sam, get_unetr_decoder_state(), tmp_path / "joint.pth")
    for path in (plain, joint):
        assert load_sam(path).config == get_tiny_config()
    fresh = get_tiny_sam(seed=1)  # the mark lives in `_metadata`: strict loading still takes the plain file
    fresh.load_state_dict(torch.load(plain, weights_only=True), strict=True)
    assert_same_state(fresh.state_dict(), tiny_sam.state_dict())
    assert set(torch.load(plain, weights_only=True)) == set(tiny_sam.state_dict())


def test_missing_keys_are_named(tiny_sam, tmp_path):
    state = dict(tiny_sam.state_dict())
    del state["mask_decoder.output_upscaling.0.weight"]
    with pytest.raises(ModelError, match=r"1 missing keys: mask_decoder\.output_upscaling\.0\.weight"):
        check_sam_state(state, allow_custom=True)
    del state["image_encoder.pos_embed"]
    with pytest.raises(ModelError, match="lacks 'image_encoder.pos_embed'"):
        check_sam_state(state, allow_custom=True)


def test_wrong_shapes_are_named(tiny_sam):
    state = dict(tiny_sam.state_dict())
    state["mask_decoder.iou_token.weight"] = torch.zeros(2, 64)
    expected = r"mask_decoder.iou_token.weight \(2, 64\) \(expected \(1, 64\)\)"
    with pytest.raises(ModelError, match=expected):
        check_sam_state(state, allow_custom=True)


class _CreatesMarkerWhenUnpickled:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_python_objects_outside_the_weights_are_refused_without_running_them(tiny_sam, tmp_path):
    marker = tmp_path / "pwned"
    payload = _CreatesMarkerWhenUnpickled(marker)
    pickle.loads(pickle.dumps(payload))  # the payload works when unpickled naively...
    assert marker.exists()
    marker.unlink()
    state = dict(tiny_sam.state_dict())
    for name, obj in {"evil.pth": {**state, "extra": payload},
                      "evil_weights.pth": {"model_state": {**state, "extra": payload}}}.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(ModelError, match=rf"{name} \(a zip archive.*\) is not a plain state dict: "
                                                  r"it holds Python objects \(io.open\).*could run"):
            load_sam(tmp_path / name, allow_custom=True)
    assert not marker.exists()  # ...but never through MedicoSAM


def test_weights_load_beside_python_objects_that_never_run(tiny_sam, tmp_path):
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(RunsCommandWhenUnpickled(marker)))  # a live payload...
    assert marker.exists()
    marker.unlink()
    checkpoint = get_torch_em_checkpoint(tiny_sam.state_dict(), get_unetr_decoder_state())
    checkpoint["init"]["payload"] = RunsCommandWhenUnpickled(marker)
    for legacy in (False, True):
        path = tmp_path / f"torch_em_{legacy}.pt"
        torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(pickle.UnpicklingError):
            torch.load(path, weights_only=True)
        assert set(load_checkpoint_file(path)) == {"model_state", "decoder_state"}  # init is dropped
        loaded = load_sam(path, allow_custom=True)
        assert_same_state(loaded.sam.state_dict(), tiny_sam.state_dict())
        assert_same_state(loaded.decoder_state, get_unetr_decoder_state())
    assert not marker.exists()  # ...that MedicoSAM never runs


@pytest.mark.slow
def test_real_torch_em_trainer_checkpoint_loads_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    sam = get_tiny_sam(seed=3, config=get_tiny_config(image_size=128, embed_dim=32, depth=1))
    path = write_torch_em_trainer_checkpoint(tmp_path, sam, {"payload": RunsCommandWhenUnpickled(marker)})
    assert not marker.exists()
    pickled = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))  # read, not run
    assert {"segment_anything.modeling.sam.Sam", "torch_em.data.tensor_dataset.TensorDataset",
            "torch_em.transform.augmentation.KorniaAugmentationPipeline", "numpy.ndarray", f"{os.name}.system",
            "kornia.augmentation._2d.geometric.horizontal_flip.RandomHorizontalFlip"} <= pickled
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    loaded = load_sam(path, allow_custom=True)
    assert_same_state(loaded.sam.state_dict(), sam.state_dict())  # the trainer trained `sam` in place
    assert not marker.exists()


def test_damaged_files_are_named(tiny_sam, tmp_path):
    whole = export_sam(tiny_sam, tmp_path / "whole.pth").read_bytes()
    for name, (data, kind) in {
        "half.pth": (whole[: len(whole) // 2], "a zip archive"),
        "random.pth": (b"\x07" + os.urandom(4096), "neither a zip archive nor a pickle"),
        "empty.pth": (b"", "an empty file"),
        "text.pth": (b"not a checkpoint\n", "neither a zip archive nor a pickle"),
        "raw.pkl": (pickle.dumps({"run": RunsCommandWhenUnpickled(tmp_path / "pwned")}, protocol=2),
                    r"a plain pickle, not written by torch.save, naming posix.system"),
    }.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelError, match=f"{name}: it is {kind}.*(corrupt|incomplete)") as error:
            load_checkpoint_file(tmp_path / name)
        assert "weights_only" not in str(error.value)  # torch's advice to load it unsafely is not repeated
    torch.save({"weights": _CreatesMarkerWhenUnpickled(tmp_path / "pwned")}, tmp_path / "legacy.pth",
               _use_new_zipfile_serialization=False)
    with pytest.raises(ModelError, match=r"legacy.pth \(a PyTorch checkpoint in the legacy \(non-zip\) "
                                              r"format\) is not a plain state dict: .*io.open") as error:
        load_checkpoint_file(tmp_path / "legacy.pth")
    assert "weights_only" not in str(error.value) and not (tmp_path / "pwned").exists()
    with pytest.raises(ModelError, match="nowhere.pth does not exist"):
        load_checkpoint_file(tmp_path / "nowhere.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ModelError, match="holds a list, not a state dict"):
        load_checkpoint_file(tmp_path / "list.pth")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_named(tiny_sam, tmp_path, bad):
    state = {key: value.clone() for key, value in tiny_sam.state_dict().items()}
    state["mask_decoder.iou_token.weight"][0, 5] = bad
    path = export_sam(state, tmp_path / "diverged.pth")
    with pytest.raises(ModelError, match=r"diverged.pth: mask_decoder.iou_token.weight holds 1 NaN or "
                                              r"infinite values \(of 64\)"):
        load_sam(path, allow_custom=True)
    decoder = get_unetr_decoder_state()
    decoder["out_conv.bias"][1, 2] = bad
    torch.save(decoder, tmp_path / "decoder.pt")
    with pytest.raises(ModelError, match="decoder.pt: out_conv.bias holds 1 NaN"):
        load_decoder_state(tmp_path / "decoder.pt")
    export_sam_with_decoder(tiny_sam, decoder, tmp_path / "joint.pt")
    with pytest.raises(ModelError, match="joint.pt: out_conv.bias holds 1 NaN"):
        load_sam(tmp_path / "joint.pt", allow_custom=True)


def _get_phantom_state(config):
    """A state dict of `config`'s shapes made of zero-stride views: a few kB on disk, any size when built."""
    with torch.device("meta"):
        shapes = {key: value.shape for key, value in build_sam(config).state_dict().items()}
    return {key: torch.zeros(()).expand(shape) for key, shape in shapes.items()}


def test_implausible_sizes_are_refused_before_building(tiny_sam, tmp_path):
    state = dict(tiny_sam.state_dict())
    state["image_encoder.pos_embed"] = torch.zeros(()).expand(1, 20000, 20000, 64)  # 1.28 TB if built
    torch.save(state, tmp_path / "huge_grid.pth")
    assert (tmp_path / "huge_grid.pth").stat().st_size < 10_000_000
    with pytest.raises(ModelError, match=r"huge_grid.pth is not a usable SAM checkpoint: SAM sizes out of "
                                              r"range: image_size=320000 \(allowed: 1 to 4096\)"):
        load_sam(tmp_path / "huge_grid.pth", allow_custom=True)
    with pytest.raises(ModelError, match=r"encoder_depth=0 \(allowed: 1 to 128\)"):
        SamConfig(encoder_depth=0)

    torch.save(_get_phantom_state(get_tiny_config()), tmp_path / "phantom.pth")
    with pytest.raises(ModelError, match=r"phantom.pth: image_encoder.pos_embed claims \(1, 16, 16, 64\) "
                                              r"values but the file stores 4 bytes"):
        load_sam(tmp_path / "phantom.pth", allow_custom=True)

    wide = SamConfig(encoder_embed_dim=4096, encoder_depth=128, encoder_num_heads=32,
                     encoder_global_attn_indexes=(127,))  # in range, but 103 GB as float32
    torch.save(_get_phantom_state(wide), tmp_path / "wide.pth")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if memory > 103e9:
        pytest.skip("this machine could build that model")
    with pytest.raises(ModelError, match=r"wide.pth: building this SAM model needs 103.\d GB but the cpu "
                                              r"device has .* GB in total"):
        load_sam(tmp_path / "wide.pth", allow_custom=True)


def test_decoder_width_is_bounded_in_configs_and_builder():
    from medicosam_training.semantic.models import SemanticConfig
    from medicosam_training.trainer import TrainConfig
    from medicosam_training.unetr import UNETRDecoder

    with pytest.raises(InputError, match="decoder features 100000000 out of range: use 1 to 512"):
        UNETRDecoder(256, 2, initial_features=100_000_000)
    with pytest.raises(InputError, match="decoder features 0 out of range"):
        SemanticConfig(ndim=2, n_classes=2, sam=get_tiny_config(), decoder_features=0)
    with pytest.raises(MedicoSAMError, match="decoder_features=100000000: use 1 to 512"):
        TrainConfig(decoder_features=100_000_000)


def test_export_is_atomic(tiny_sam, tmp_path):
    path = export_sam(tiny_sam, tmp_path / "model.pth")
    before = path.read_bytes()
    with pytest.raises(ModelError, match="adapter"):
        export_sam(get_sam_med2d_state(tiny_sam), path)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        export_sam_with_decoder(tiny_sam, {"fn": lambda: None}, path)  # fails inside torch.save
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["model.pth"]


def test_load_sam_from_url_uses_the_cache(tiny_sam, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDICOSAM_CACHE_DIR", str(tmp_path / "cache"))
    data = export_sam(tiny_sam, tmp_path / "tiny.pth").read_bytes()
    with FileServer() as server:
        server.routes["/tiny.pth"] = Route(data)
        first = load_sam(server.url("/tiny.pth"), allow_custom=True)
        second = load_sam(server.url("/tiny.pth"), allow_custom=True, offline=True)
        assert len(server.requests) == 1
    assert first.path == second.path and first.path.parent == tmp_path / "cache" / "url"
    assert first.model_id == second.model_id == xxhash.xxh128(data).hexdigest()[:16]


def test_export_writes_compact_contiguous_tensors(tiny_sam, tmp_path):
    state = dict(tiny_sam.state_dict())
    transposed, sliced = "mask_decoder.mask_tokens.weight", "mask_decoder.iou_token.weight"
    state[transposed] = state[transposed].t().contiguous().t()  # same values, non-contiguous
    state[sliced] = torch.cat([state[sliced].flatten(), torch.zeros(1_000_000)])[:64].view(1, 64)
    assert not state[transposed].is_contiguous() and state[sliced].untyped_storage().nbytes() > 4_000_000
    path = export_sam(state, tmp_path / "model.pth")
    reference = export_sam(tiny_sam, tmp_path / "reference.pth")
    assert abs(path.stat().st_size - reference.stat().st_size) < 4096  # the 4 MB buffer was not written
    saved = torch.load(path, weights_only=True)
    assert all(t.is_contiguous() for t in saved.values())
    assert_same_state(saved, tiny_sam.state_dict())
