"""Checkpoint loading, compatibility errors and export, with real segment_anything models."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
import xxhash
from helpers_models import (
    assert_same_state,
    get_mask_decoder_outputs,
    get_sam_med2d_state,
    get_tiny_sam,
    get_torch_em_checkpoint,
    get_unetr_decoder_state,
)
from http_server import FileServer, Route
from segment_anything import sam_model_registry

from medicosam.models.checkpoint import (
    CheckpointError,
    check_sam_state,
    export_sam,
    export_sam_with_decoder,
    get_sam_state_dict,
    load_checkpoint_file,
    load_decoder_state,
    load_sam,
)
from medicosam.models.config import OFFICIAL_CONFIGS, build_sam, get_tiny_config
from medicosam.models.download import CheckpointNotFoundError


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
    assert set(raw) == {"model_state", "decoder_state"}
    assert_same_state(raw["model_state"], tiny_sam.state_dict())  # plain keys, no prefixes
    assert_same_state(load_decoder_state(joint), decoder)
    assert_same_state(load_sam(joint, allow_custom=True).decoder_state, decoder)
    plain = export_sam(loaded.sam, tmp_path / "plain.pt")
    assert_same_state(torch.load(plain, weights_only=True), tiny_sam.state_dict())
    torch.save({"model_state": tiny_sam.state_dict()}, tmp_path / "sam_only.pt")
    with pytest.raises(CheckpointError, match="no decoder_state"):
        load_decoder_state(tmp_path / "sam_only.pt")


def test_released_decoder_file_loads_as_decoder_not_as_sam(tmp_path):
    path = tmp_path / "decoder.pt"
    torch.save(get_unetr_decoder_state(), path)
    assert_same_state(load_decoder_state(path), get_unetr_decoder_state())
    with pytest.raises(CheckpointError, match="holds no SAM weights.*load_decoder_state"):
        load_sam(path, allow_custom=True)


def test_sam_med2d_adapters_are_named(tiny_sam, tmp_path):
    path = tmp_path / "sam_med2d.pth"
    torch.save(get_sam_med2d_state(tiny_sam), path)
    with pytest.raises(CheckpointError) as error:
        load_sam(path, allow_custom=True)
    message = str(error.value)
    assert str(path) in message and "SAM-Med2D" in message
    assert "image_encoder.blocks.N.Adapter.channel.N.weight (x4)" in message
    assert "non-official" not in message  # allow_custom: the size is fine, the adapters are not


def test_256_px_checkpoint_needs_allow_custom(tiny_sam, tmp_path):
    path = export_sam(tiny_sam, tmp_path / "tiny.pth")
    expected = r"image_size 256 \(vit_b: 1024\).*sam_model_registry cannot load it; pass allow_custom=True"
    with pytest.raises(CheckpointError, match=expected):
        load_sam(path)
    assert load_sam(path, allow_custom=True).config.image_size == 256


def test_missing_keys_are_named(tiny_sam, tmp_path):
    state = dict(tiny_sam.state_dict())
    del state["mask_decoder.output_upscaling.0.weight"]
    with pytest.raises(CheckpointError, match=r"1 missing keys: mask_decoder\.output_upscaling\.0\.weight"):
        check_sam_state(state, allow_custom=True)
    del state["image_encoder.pos_embed"]
    with pytest.raises(CheckpointError, match="lacks 'image_encoder.pos_embed'"):
        check_sam_state(state, allow_custom=True)


def test_wrong_shapes_are_named(tiny_sam):
    state = dict(tiny_sam.state_dict())
    state["mask_decoder.iou_token.weight"] = torch.zeros(2, 64)
    expected = r"mask_decoder.iou_token.weight \(2, 64\) \(expected \(1, 64\)\)"
    with pytest.raises(CheckpointError, match=expected):
        check_sam_state(state, allow_custom=True)


class _CreatesMarkerWhenUnpickled:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_without_running_it(tiny_sam, tmp_path):
    marker = tmp_path / "pwned"
    payload = _CreatesMarkerWhenUnpickled(marker)
    pickle.loads(pickle.dumps(payload))  # the payload works when unpickled naively...
    assert marker.exists()
    marker.unlink()
    path = tmp_path / "evil.pth"
    torch.save({"model_state": tiny_sam.state_dict(), "extra": payload}, path)
    with pytest.raises(CheckpointError, match=r"evil.pth is not a plain state dict: .*io.open.*could run"):
        load_checkpoint_file(path)
    with pytest.raises(CheckpointError):
        load_sam(path, allow_custom=True)
    assert not marker.exists()  # ...but never through MedicoSAM


def test_damaged_files_are_named(tiny_sam, tmp_path):
    whole = export_sam(tiny_sam, tmp_path / "whole.pth").read_bytes()
    for name, data in {"half.pth": whole[: len(whole) // 2], "random.pth": os.urandom(4096),
                       "empty.pth": b"", "text.pth": b"not a checkpoint\n"}.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=f"{name}.*(corrupt|incomplete)"):
            load_checkpoint_file(tmp_path / name)
    with pytest.raises(CheckpointNotFoundError, match="nowhere.pth does not exist"):
        load_checkpoint_file(tmp_path / "nowhere.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        load_checkpoint_file(tmp_path / "list.pth")


def test_export_is_atomic(tiny_sam, tmp_path):
    path = export_sam(tiny_sam, tmp_path / "model.pth")
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="adapter"):
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
