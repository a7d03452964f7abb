"""SA-Med2D-20M at scale, on an SA-Med2D tree of real slices (nilearn ICBM152 at 2 mm).

The compact index must give exactly today's records, split and object draws; the v2 shards the
converter writes must read back the images and merged instance labels computed here
independently (numpy padding, scikit-image resizing); bad files must be named in the error.
"""

from __future__ import annotations

import copy
import json
import os
import pickle

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from skimage.transform import resize
from test_data import samed2d  # noqa: F401  (the fixture `tree` reads)

from medicosam import cli
from medicosam.errors import DataError
from medicosam_training.dataset import SAMed2DDataset, SAMed2DShardDataset, get_training_datasets
from medicosam_training.records import get_samed2d_records, select_split
from medicosam_training.samed2d.convert import ConvertConfig, convert_samed2d, merge_masks
from medicosam_training.samed2d.index import INDEX_SUFFIX, load_samed2d_index, read_index_file
from medicosam_training.samed2d.shards import ShardRecords

SIZE = 117  # the shards' side: the axial slices (117 x 99) are only padded, the others resized


def read(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def tree(request):
    """test_data's SA-Med2D v1 tree of real slices: {image path in the JSON: (image, merged instances)}."""
    root, instances = request.getfixturevalue("samed2d")
    return root, {f"images/{stem}.png": (read(root / "images" / f"{stem}.png"), labels)
                  for stem, labels in instances.items()}


def test_index_gives_todays_records_split_and_draws(tree):
    root, _ = tree
    records = get_samed2d_records(root)
    built = load_samed2d_index(root)
    assert (root / ("SAMed2D_v1.json" + INDEX_SUFFIX)).is_file()
    index = load_samed2d_index(root)  # the file written by the first call, memory-mapped
    assert index.path is not None and list(built) == list(index) == records
    assert index.n_masks == sum(len(record.labels) for record in records) and index[-1] == records[-1]
    assert list(pickle.loads(pickle.dumps(index))) == records  # how spawned workers receive it
    for seed in (0, 1):
        for split in (None, "train", "val"):
            assert list(index.select_split(split, 0.25, seed)) == select_split(records, split, 0.25, seed)

    indexed = SAMed2DDataset(root, image_size=64, n_obj=2, min_size=5, split="val", val_fraction=0.25, seed=1)
    assert isinstance(indexed.records, type(index))  # the dataset reads the memory-mapped index
    listed = copy.copy(indexed)
    listed.records = select_split(records, "val", 0.25, 1)  # the JSON reader's records
    for epoch in (0, 1):
        listed.set_epoch(epoch)
        indexed.set_epoch(epoch)
        for i in range(len(listed)):
            ours, todays = indexed[i], listed[i]
            assert ours["source"] == todays["source"] and torch.equal(ours["masks"], todays["masks"])


def test_index_keeps_odd_entries_exactly_and_is_rebuilt_when_the_json_changes(tmp_path):
    text = ('{"images/b.png": ["masks/b--0000_000.png", "elsewhere/b.png"], "images/ü--x.png": [],\n'
            ' "c.png": ["masks/c\\u0001.png"], "images/a.png": ["masks/a--1.png"], "images/b.png": ["masks/b2.png"],'
            ' "images/d.png": ["masks/d\\u0000--0.png", "masks/d--1.png"]}')
    path = tmp_path / "SAMed2D_v1.json"
    path.write_text(text, encoding="utf-8")
    assert list(load_samed2d_index(tmp_path)) == get_samed2d_records(tmp_path)  # the last "images/b.png" wins
    path.write_text('{"images/e.png": ["masks/e--0.png"]}')
    os.utime(path, ns=(1, 1))
    assert list(load_samed2d_index(tmp_path)) == get_samed2d_records(tmp_path)


def test_shards_read_back_the_converted_images_and_labels(tree, tmp_path):
    root, expected = tree
    out = tmp_path / "shards"
    assert cli.main(["data", "convert-samed2d", str(root), str(out), "--size", str(SIZE), "--workers", "2"]) == 0
    assert sorted(path.name for path in out.glob("*.h5")) == ["BrainWeb_00.h5", "ICBM152_00.h5"]
    shards = ShardRecords(out)
    assert len(shards) == len(expected)
    for i in range(len(shards)):
        rgb, labels, source, modality = shards.load(i)
        name = source.split("(")[-1][:-1]
        image, instances = expected[name]
        h, w = image.shape
        if max(h, w) != SIZE:  # resized as torch-em does: linear with anti-aliasing, labels nearest
            h, w = int(h * SIZE / max(image.shape) + 0.5), int(w * SIZE / max(image.shape) + 0.5)
            image = resize(image, (h, w), preserve_range=True).astype(np.uint8)
            instances = resize(instances, (h, w), order=0, anti_aliasing=False, preserve_range=True).astype(int)
        top, left = (SIZE - h + 1) // 2, (SIZE - w + 1) // 2
        pad = ((top, SIZE - h - top), (left, SIZE - w - left))
        assert np.array_equal(rgb, np.repeat(np.pad(image, pad)[..., None], 3, axis=-1))
        assert np.array_equal(labels, np.pad(instances, pad))
        assert modality == ("ct" if name.startswith("images/ct_") else "mr")
    val = shards.select_split("val", 0.25, 0)
    assert sorted(shards.modalities[c] for c in val.get_modality_codes()) == ["ct", "mr", "mr"]  # .25*4, .25*7
    dataset = SAMed2DShardDataset(out, image_size=64, n_obj=5, min_size=5)
    train_set, val_set = get_training_datasets(out, image_size=64, min_size=5, val_fraction=0.25)  # `train --data`
    assert isinstance(train_set, SAMed2DShardDataset) and (len(train_set), len(val_set)) == (len(shards) - 3, 3)
    sample = dataset[0]
    assert sample["image"].shape == (3, 64, 64) and 1 <= sample["masks"].shape[0] <= 3
    assert convert_samed2d(root, out, ConvertConfig(size=SIZE)).shards_kept == 2  # a second run keeps them


def test_reference_fixes(tree, tmp_path):
    root, expected = tree
    record = get_samed2d_records(root)[0]
    image, instances = expected[record.image[len(str(root)) + 1:]]
    assert np.array_equal(merge_masks(record, image), instances)
    inverted = merge_masks(record, image, "ichallenge_adam_task2")  # its optic discs are the masks' zeros
    assert np.array_equal(inverted == 0, np.zeros_like(image, bool))
    assert inverted[0, 0] == 3 and inverted[instances == 3].max() == 2


def test_bad_inputs_name_the_file(tree, tmp_path):
    root, _ = tree
    for text, message in (("[1, 2]", "expected a JSON object"), ('{"images/a.png": "masks/a.png"}', "not a list"),
                          ('{"images/a.png": ["masks/a.png"', "not valid JSON")):
        folder = tmp_path / f"json{len(message)}"
        folder.mkdir()
        (folder / "SAMed2D_v1.json").write_text(text)
        with pytest.raises(DataError, match=message) as error:
            load_samed2d_index(folder)
        assert str(folder / "SAMed2D_v1.json") in str(error.value)

    mapping = json.loads((root / "SAMed2D_v1.json").read_text())
    first = sorted(mapping)[0]
    broken = tmp_path / "broken"
    broken.mkdir()
    os.symlink(root / "images", broken / "images")
    os.symlink(root / "masks", broken / "masks")
    (broken / "SAMed2D_v1.json").write_text(json.dumps({first: mapping[first] + ["masks/gone.png"]}))
    with pytest.raises(DataError, match="gone.png"):
        convert_samed2d(broken, tmp_path / "out1", ConvertConfig(size=SIZE, workers=1))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 5), np.uint8)), str(tmp_path / "small.png"))
    (broken / "SAMed2D_v1.json").write_text(json.dumps({first: mapping[first] + [str(tmp_path / "small.png")]}))
    with pytest.raises(DataError, match="small.png: mask shape"):
        convert_samed2d(broken, tmp_path / "out2", ConvertConfig(size=SIZE, workers=1))

    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "garbage_00.h5").write_bytes(b"not an HDF5 file" * 100)
    with pytest.raises(DataError, match="garbage_00.h5"):
        ShardRecords(shards)
    (shards / "garbage_00.h5").unlink()
    with h5py.File(shards / "shapes_00.h5", "w") as file:
        file["raw"], file["labels"] = np.zeros((3, 2, 8, 8), np.uint8), np.zeros((3, 8, 8), np.uint8)
    with pytest.raises(DataError, match="shapes_00.h5"):
        ShardRecords(shards)
    (shards / "shapes_00.h5").unlink()
    convert_samed2d(root, shards, ConvertConfig(size=SIZE, workers=1))
    path = shards / "ICBM152_00.h5"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a copy cut short
    with pytest.raises(DataError, match="ICBM152_00.h5"):
        records = ShardRecords(shards)
        for i in range(len(records)):
            records.load(i)


def test_an_index_damaged_in_place_is_built_again(tmp_path, caplog):
    entries = {f"images/ct_{n:03d}--case.png": [f"masks/ct_{n:03d}--case_{m}.png" for m in range(2)] for n in range(50)}
    (tmp_path / "SAMed2D_v1.json").write_text(json.dumps(entries))
    expected = get_samed2d_records(tmp_path)
    path = load_samed2d_index(tmp_path).path
    whole = path.read_bytes()
    header, index = read_index_file(path, tmp_path)
    start = index.arrays["image_bytes"].start - header["arrays"]["image_bytes"]["offset"]  # of the arrays
    places = {"a path's bytes": start + header["arrays"]["image_bytes"]["offset"] + 100,
              "an offsets array": start + header["arrays"]["mask_offsets"]["offset"] + 8}
    del index
    for what, where in places.items():
        damaged = bytearray(whole)
        damaged[where:where + 4] = b"\xff\xfe\xff\xfe"  # in place: same size, the JSON untouched
        (tmp_path / ("SAMed2D_v1.json" + INDEX_SUFFIX)).write_bytes(damaged)
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert list(load_samed2d_index(tmp_path)) == expected, what  # was a UnicodeDecodeError or wrong paths
        assert "is damaged (it does not match its checksum): it is built again" in caplog.text
        assert (tmp_path / ("SAMed2D_v1.json" + INDEX_SUFFIX)).read_bytes() == whole
