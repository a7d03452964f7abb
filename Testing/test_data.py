"""Training data (records and datasets) on real slices (nilearn ICBM152, ITK BrainWeb) and on phantoms.

The SA-Med2D layout is rebuilt in tmp from real slices; its modality prefixes are only names (the
split reads nothing else). Expected masks are computed independently of the reader (torch's
"nearest-exact" resize of the merged instances).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy import ndimage
from segment_anything.utils.transforms import ResizeLongestSide

from medicosam.errors import DataError, InputError, MedicoSAMError
from medicosam.normalization import get_intensity_window
from medicosam_training.dataset import (
    FolderDataset2D,
    SAMed2DDataset,
    VolumeSliceDataset,
    collate_objects,
    get_training_datasets,
)
from medicosam_training.phantoms import MODALITIES, make_phantom_2d, make_phantom_3d, write_phantom_dataset
from medicosam_training.records import (
    Record,
    derive_modality,
    get_class_components,
    get_instances_from_classes,
    split_by_modality,
)
from medicosam_training.sample_data import get_itk_examples_dir

AXIAL = (30, 36, 42, 48, 54, 60)  # slices of the 2 mm ICBM152 volume (95 x 117 x 99) with brain
CORONAL = (40, 50, 60, 70)


def write(array: np.ndarray, path) -> None:
    is_rgb = array.ndim == 3 and array.shape[-1] == 3
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=is_rgb), str(path))


def resize_nearest(labels: np.ndarray, size: int) -> np.ndarray:
    h, w = ResizeLongestSide.get_preprocess_shape(labels.shape[0], labels.shape[1], size)
    tensor = torch.from_numpy(labels.astype(np.float32))[None, None]
    return F.interpolate(tensor, (h, w), mode="nearest-exact")[0, 0].numpy().astype(np.int64)


def get_brainweb_slice():
    """BrainT1Slice (RGB PNG with equal channels) and the ventricle mask (RGB PNG, 0/255)."""
    folder = get_itk_examples_dir()
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "BrainT1Slice.png")))[..., 0]
    ventricle = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "VentricleModel.png")))[..., 0] > 127
    return image, ventricle


@pytest.fixture(scope="module")
def samed2d(icbm152, tmp_path_factory):
    """SA-Med2D v1 layout: per image a brain mask (sorted first), a GM and a WM mask (overwrite it)."""
    root = tmp_path_factory.mktemp("samed2d")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    slices = [(f"mr_t1--ICBM152--sym09a--z_{k:04d}", 0, k) for k in AXIAL]
    slices += [(f"ct_00--ICBM152--sym09a--y_{j:04d}", 1, j) for j in CORONAL]
    mapping, expected = {}, {}
    for stem, axis, index in slices:
        t1, gm, wm = (np.take(icbm152[kind], index, axis) for kind in ("t1", "gm", "wm"))
        write(t1, root / "images" / f"{stem}.png")
        masks = []
        for n, mask in enumerate((t1 > 0, gm, wm)):
            name = f"masks/{stem}--{n:04d}_000.png"
            write(mask.astype(np.uint8) * 255, root / name)
            masks.append(name)
        mapping[f"images/{stem}.png"] = masks[::-1]  # the reader must sort them itself
        expected[stem] = np.select([wm, gm, t1 > 0], [3, 2, 1], 0)
    image, ventricle = get_brainweb_slice()
    stem = "mr_t1--BrainWeb--t1--z_0000"
    write(image, root / "images" / f"{stem}.png")
    write(ventricle.astype(np.uint8) * 255, root / "masks" / f"{stem}--0000_000.png")
    mapping[f"images/{stem}.png"] = [f"masks/{stem}--0000_000.png"]
    expected[stem] = ventricle.astype(np.int64)
    (root / "SAMed2D_v1.json").write_text(json.dumps(mapping))
    return root, expected


def test_samed2d_reads_merged_objects_resized_and_padded(samed2d):
    root, expected = samed2d
    dataset = SAMed2DDataset(root, image_size=96, n_obj=5, min_size=5)
    assert len(dataset) == 11 and dataset.n_skipped == 0
    for index in (0, 4, 10):
        sample = dataset[index]
        stem = sample["source"].split("/")[-1][:-4]
        labels = expected[stem]
        h, w = ResizeLongestSide.get_preprocess_shape(*labels.shape, 96)
        assert w < 96 or h < 96  # non-square slices: padding exists
        image, masks = sample["image"], sample["masks"]
        assert image.shape == (3, 96, 96) and image.dtype == torch.float32
        assert masks.dtype == torch.bool and masks.shape[1:] == (96, 96)
        assert image.min() >= 0 and image.max() <= 255 and image.max() > 50
        assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
        assert not image[:, h:, :].any() and not image[:, :, w:].any()
        assert not masks[:, h:, :].any() and not masks[:, :, w:].any()
        resized = resize_nearest(labels, 96)
        ids, counts = np.unique(resized, return_counts=True)
        assert masks.shape[0] == np.count_nonzero((ids > 0) & (counts >= 5))
        for mask in masks.numpy():
            object_ids = np.unique(resized[mask[:h, :w]])
            assert len(object_ids) == 1 and object_ids[0] > 0
            assert np.array_equal(mask[:h, :w], resized == object_ids[0])
        assert sample["modality"] == ("ct" if stem.startswith("ct_") else "mr")
    # merging: the brain mask (first) keeps only what GM and WM (later) do not overwrite, a ring
    sample = dataset[0]
    assert sample["masks"].shape[0] == 3
    assert int(sample["masks"].sum(0).max()) == 1


def test_samed2d_objects_are_seeded_per_item_and_epoch(samed2d):
    root, _ = samed2d
    dataset = SAMed2DDataset(root, image_size=64, n_obj=1, min_size=5, seed=3)
    first = [dataset[i]["masks"] for i in range(6)]
    assert all(torch.equal(a, dataset[i]["masks"]) for i, a in enumerate(first))
    assert all(mask.shape[0] == 1 for mask in first)
    dataset.set_epoch(1)
    assert any(not torch.equal(a, dataset[i]["masks"]) for i, a in enumerate(first))


def test_samed2d_split_is_stratified_and_seeded(samed2d):
    root, _ = samed2d
    kwargs = dict(image_size=64, min_size=5, val_fraction=0.25)
    train, val = (SAMed2DDataset(root, split=split, seed=0, **kwargs) for split in ("train", "val"))
    train_names = {record.image for record in train.records}
    val_names = {record.image for record in val.records}
    assert not train_names & val_names and len(train_names | val_names) == 11
    assert sorted(record.modality for record in val.records) == ["ct", "mr", "mr"]  # round(.25*4), round(.25*7)
    again = SAMed2DDataset(root, split="val", seed=0, **kwargs)
    other = SAMed2DDataset(root, split="val", seed=1, **kwargs)
    assert [r.image for r in again.records] == [r.image for r in val.records]
    assert [r.image for r in other.records] != [r.image for r in val.records]


def test_split_by_modality_rules():
    records = [Record(f"{m}{i}", (), m) for m, n in (("ct", 100), ("mr", 2), ("us", 1)) for i in range(n)]
    train, val = split_by_modality(records, 0.1, seed=5)
    counts = {m: sum(r.modality == m for r in val) for m in ("ct", "mr", "us")}
    assert counts == {"ct": 10, "mr": 1, "us": 0}
    assert len(train) + len(val) == len(records) and not set(train) & set(val)
    assert split_by_modality(records, 0.1, seed=5) == (train, val)
    assert split_by_modality(records, 0.0, seed=5) == (records, [])
    with pytest.raises(InputError, match="val_fraction"):
        split_by_modality(records, 1.0, seed=0)
    assert derive_modality("images/ultrasound_00--BUSI--x--a_0001.png") == "ultrasound"
    assert derive_modality("case_001.nii.gz", "ct") == "ct"


def test_folder_dataset_semantic_labels_become_components(icbm152, tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    k = 50
    t1 = np.take(icbm152["t1"], k, 0)
    classes = np.select([np.take(icbm152["wm"], k, 0), np.take(icbm152["gm"], k, 0)], [2, 1], 0)
    write((t1.astype(np.uint16) * 40), tmp_path / "img" / "mr--icbm_z050.mha")  # 16-bit: windowed
    write(classes.astype(np.uint8), tmp_path / "lab" / "mr--icbm_z050.png")
    semantic = FolderDataset2D(tmp_path / "img", tmp_path / "lab", image_size=128, n_obj=50, min_size=8,
                               label_mode="semantic")
    instance = FolderDataset2D(tmp_path / "img", tmp_path / "lab", image_size=128, n_obj=50, min_size=8)
    masks = semantic[0]["masks"].numpy()
    assert masks.shape[0] > 2 and instance[0]["masks"].shape[0] == 2
    classes_resized = resize_nearest(classes, 128)
    h, w = classes_resized.shape
    for mask in masks:
        assert ndimage.label(mask, structure=np.ones((3, 3)))[1] == 1
        assert len(np.unique(classes_resized[mask[:h, :w]])) == 1
    sample = semantic[0]
    assert sample["modality"] == "mr"
    expected = ResizeLongestSide(128).apply_image(get_intensity_window(t1.astype(np.uint16) * 40).apply(
        t1.astype(np.uint16) * 40))
    assert np.array_equal(sample["image"][:, :h, :w].numpy(), expected.transpose(2, 0, 1))


def test_records_and_configs_import_without_torch():
    """Semantic and evaluation code read data through `records`, and commands read their defaults from
    `configs`, before any model is loaded."""
    code = ("import sys, medicosam_training.records, medicosam_training.configs; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_classes_become_fully_connected_components(icbm152):
    """Real tissue classes of an ICBM152 slab: every component is one object of one class, 26-connected."""
    labels = np.select([icbm152["wm"][40:56], icbm152["gm"][40:56]], [2, 1], 0)
    instances = get_instances_from_classes(labels)
    n_expected = sum(ndimage.label(labels == c, structure=np.ones((3, 3, 3)))[1] for c in (1, 2))
    assert instances.max() == n_expected and set(np.unique(instances)) == set(range(n_expected + 1))
    assert np.array_equal(instances > 0, labels > 0)
    for object_id in range(1, n_expected + 1):
        assert len(np.unique(labels[instances == object_id])) == 1
    assert [c for c, _, _ in get_class_components(labels)] == [1, 2]
    assert [n for _, _, n in get_class_components(labels, [2])] == [ndimage.label(labels == 2,
                                                                                  structure=np.ones((3, 3, 3)))[1]]


@pytest.fixture(scope="module")
def icbm_volumes(icbm152, tmp_path_factory):
    """The 2 mm T1 (as float MR units, so it is windowed per volume) and GM=1 / WM=2 labels."""
    folder = tmp_path_factory.mktemp("volumes")
    t1 = icbm152["t1"].astype(np.float32) * 3.7
    labels = np.select([icbm152["wm"], icbm152["gm"]], [2, 1], 0).astype(np.uint8)
    write(t1, folder / "mr--icbm.nii.gz")
    write(labels, folder / "mr--icbm_labels.nii.gz")
    return folder / "mr--icbm.nii.gz", folder / "mr--icbm_labels.nii.gz", t1, labels


def test_volume_slices_with_objects_and_per_volume_window(icbm_volumes):
    image_path, label_path, t1, labels = icbm_volumes
    dataset = VolumeSliceDataset([image_path], [label_path], axis=0, image_size=64, min_size=25)
    used = {k for _, k in dataset.slices}
    big = {k for k in range(labels.shape[0]) if np.bincount(labels[k].ravel(), minlength=3)[1:].min() > 400}
    empty = {k for k in range(labels.shape[0]) if not labels[k].any()}
    assert big <= used and not used & empty
    index = len(dataset) // 2
    k = dataset.slices[index][1]
    sample = dataset[index]
    assert sample["source"].endswith(f"(axis 0, slice {k})") and sample["modality"] == "mr"
    window = get_intensity_window(t1, "auto")  # the whole volume's window, not the slice's
    expected = ResizeLongestSide(64).apply_image(window.apply(t1[k]))
    h, w = expected.shape[:2]
    assert np.array_equal(sample["image"][:, :h, :w].numpy(), expected.transpose(2, 0, 1))
    coronal = VolumeSliceDataset([image_path], [label_path], axis=1, image_size=64, min_size=25)
    j = coronal.slices[0][1]
    assert coronal[0]["source"].endswith(f"(axis 1, slice {j})")
    rows, cols = ResizeLongestSide.get_preprocess_shape(t1.shape[0], t1.shape[2], 64)
    assert not coronal[0]["masks"][:, rows:].any() and coronal[0]["masks"][:, :rows, :cols].any()


def test_collate_pads_objects_and_marks_valid(samed2d):
    root, _ = samed2d
    dataset = SAMed2DDataset(root, image_size=64, n_obj=5, min_size=5)
    brainweb = next(i for i, record in enumerate(dataset.records) if "BrainWeb" in record.image)
    samples = [dataset[0], dataset[brainweb]]  # 3 objects (brain ring, GM, WM), 1 object (the ventricle)
    batch = collate_objects(samples)
    assert batch["image"].shape == (2, 3, 64, 64) and batch["masks"].shape == (2, 3, 64, 64)
    assert batch["valid"].tolist() == [[True, True, True], [True, False, False]]
    assert torch.equal(batch["masks"][1, 0], samples[1]["masks"][0]) and not batch["masks"][1, 1:].any()
    assert batch["modality"] == ["ct", "mr"] and batch["source"] == [s["source"] for s in samples]


def test_get_training_datasets_detects_layouts(samed2d, icbm_volumes, tmp_path):
    root, _ = samed2d
    train, val = get_training_datasets(root, 64, min_size=5, val_fraction=0.25)
    assert isinstance(train, SAMed2DDataset) and len(train) == 8 and len(val) == 3

    write_phantom_dataset(tmp_path / "phantoms", 6, size=64, n_objects=3)
    train, val = get_training_datasets(tmp_path / "phantoms", 64, min_size=10, val_fraction=0.34)
    assert isinstance(train, FolderDataset2D) and {r.modality for r in val.records} == set(MODALITIES)
    assert {train[i]["modality"] for i in range(len(train))} == set(MODALITIES)

    image_path, label_path, _, _ = icbm_volumes
    volumes = tmp_path / "volumes"
    (volumes / "imagesTr").mkdir(parents=True)
    (volumes / "labelsTr").mkdir()
    (volumes / "imagesTr" / "mr--icbm_0000.nii.gz").symlink_to(image_path)
    (volumes / "labelsTr" / "mr--icbm.nii.gz").symlink_to(label_path)
    volume, instances = make_phantom_3d((24, 40, 40), 3, "ct", 0)
    write(volume, volumes / "imagesTr" / "mr--phantom_0000.nii.gz")
    write(instances.astype(np.uint8), volumes / "labelsTr" / "mr--phantom.nii.gz")
    train, val = get_training_datasets(volumes, 64, min_size=25, val_fraction=0.5)
    assert isinstance(train, VolumeSliceDataset) and len(train.volumes) == len(val.volumes) == 1
    assert train.volumes[0].path != val.volumes[0].path  # split by volume, never by slice

    with pytest.raises(DataError, match=str(tmp_path / "phantoms" / "images")):
        get_training_datasets(tmp_path / "phantoms" / "images", 64)


def _folder(tmp_path, image: np.ndarray, label: np.ndarray, label_name="a.png"):
    (tmp_path / "img").mkdir(exist_ok=True)
    (tmp_path / "lab").mkdir(exist_ok=True)
    write(image, tmp_path / "img" / "a.png")
    write(label, tmp_path / "lab" / label_name)
    return tmp_path / "img", tmp_path / "lab"


def _get_bad_case(case: str, t1: np.ndarray, gm: np.ndarray):
    """(image, label, label file name, the file the error must name, what the error must say)."""
    if case == "rgb mask":  # ITK's VentricleModel.png really is an RGB mask
        image, _ = get_brainweb_slice()
        ventricle = sitk.GetArrayFromImage(sitk.ReadImage(str(get_itk_examples_dir() / "VentricleModel.png")))
        return image, ventricle, "a.png", "lab/a.png", "RGB image; masks must be single-channel"
    noisy16 = (t1.astype(np.uint16) * 200 + np.random.default_rng(0).integers(0, 200, t1.shape)).astype(np.uint16)
    return {
        "size mismatch": (t1, gm[:-3].astype(np.uint8), "a.png", "lab/a.png", "does not match"),
        "16-bit intensity mask": (t1, noisy16, "a.png", "lab/a.png", "looks like an intensity image"),
        "float intensity mask": (t1, t1.astype(np.float32) / 7, "a.mha", "lab/a.mha", "non-integer"),
        "no object": (t1, np.zeros_like(t1), "a.png", "img", "none of its 1 images has an object"),
    }[case]


@pytest.mark.parametrize("case", ["size mismatch", "rgb mask", "16-bit intensity mask", "float intensity mask",
                                  "no object"])
def test_bad_masks_name_the_file(icbm152, tmp_path, case):
    image, label, label_name, named, message = _get_bad_case(case, icbm152["t1"][50], icbm152["gm"][50])
    images, labels = _folder(tmp_path, image, label, label_name)
    with pytest.raises(DataError, match=message) as error:
        FolderDataset2D(images, labels, image_size=64)
    assert str(tmp_path / named) in str(error.value)
    assert isinstance(error.value, MedicoSAMError)


def test_a_mismatched_pair_is_found_at_start_from_the_headers(icbm152, tmp_path):
    from medicosam_training.evaluation.data import LabeledFolder

    t1, gm = icbm152["t1"], icbm152["gm"].astype(np.uint8)
    for folder in ("img", "lab"):
        (tmp_path / folder).mkdir()
    for k in range(40, 44):  # the bad pair sorts last: only drawing it would read it
        sitk.WriteImage(sitk.GetImageFromArray(t1[k]), str(tmp_path / "img" / f"{k}.png"))
        label = gm[k][:-3] if k == 43 else gm[k]
        sitk.WriteImage(sitk.GetImageFromArray(label), str(tmp_path / "lab" / f"{k}.nii.gz"))
    expected = f"{tmp_path / 'lab' / '43.nii.gz'}: mask shape {gm[43][:-3].shape} does not match image"
    with pytest.raises(DataError, match="does not match") as error:
        FolderDataset2D(tmp_path / "img", tmp_path / "lab", image_size=64)
    assert str(error.value).startswith(expected) and "more masks" not in str(error.value)
    with pytest.raises(DataError, match="does not match"):
        LabeledFolder(tmp_path / "img", tmp_path / "lab", ndim=2)
    assert len(LabeledFolder(tmp_path / "img", tmp_path / "lab", ndim=2, max_items=3)) == 3


def test_bad_files_name_the_file(icbm152, samed2d, tmp_path):
    t1, gm = icbm152["t1"][50], icbm152["gm"][50].astype(np.uint8)
    images, labels = _folder(tmp_path, t1, gm)
    (images / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    write(gm, labels / "b.png")
    with pytest.raises(DataError, match=f"{images / 'b.png'}: cannot read this file's header") as error:
        FolderDataset2D(images, labels, image_size=64)  # a.png is fine; b.png is found at start, not when drawn
    assert "\n" not in str(error.value)
    (images / "b.png").unlink()
    (labels / "b.png").unlink()
    (images / "c.png").write_bytes(b"")
    write(t1, images / "d.png")
    with pytest.raises(DataError, match=f"{images / 'c.png'}: no label file"):
        FolderDataset2D(images, labels, image_size=64)
    write(gm, labels / "c.png")
    write(gm, labels / "d.png")
    with pytest.raises(DataError, match=f"{images / 'c.png'}: cannot read this file's header"):
        FolderDataset2D(images, labels, image_size=64)
    (images / "c.png").unlink()

    write(icbm152["t1"][40:44], images / "c.nii.gz")
    write(icbm152["gm"][40:44].astype(np.uint8), labels / "c.nii.gz")
    with pytest.raises(DataError, match=f"{images / 'c.nii.gz'}: a volume of 4 slices"):
        FolderDataset2D(images, labels, image_size=64)  # from the headers, before any item is drawn

    root, _ = samed2d
    broken = tmp_path / "samed2d"
    (broken / "annotations").mkdir(parents=True)
    (broken / "images").symlink_to(root / "images")
    (broken / "masks").symlink_to(root / "masks")
    mapping = json.loads((root / "SAMed2D_v1.json").read_text())
    first = sorted(mapping)[0]
    mapping[first] = mapping[first] + ["masks/missing--0009_000.png"]
    (broken / "annotations" / "SAMed2D_v1.json").write_text(json.dumps(mapping))
    with pytest.raises(DataError, match="missing--0009_000.png"):
        SAMed2DDataset(broken, image_size=64)


def test_images_without_objects_are_skipped_and_counted(icbm152, tmp_path):
    t1, gm = icbm152["t1"][50], icbm152["gm"][50].astype(np.uint8)
    images, labels = _folder(tmp_path, t1, np.zeros_like(gm))
    write(t1, images / "b.png")
    write(gm, labels / "b.png")
    dataset = FolderDataset2D(images, labels, image_size=64)
    assert dataset[0]["source"] == str(images / "b.png") and dataset.n_skipped == 1


def test_phantoms_are_deterministic_and_textured():
    for modality, dtype in zip(MODALITIES, (np.int16, np.float32, np.uint8)):
        image, instances = make_phantom_2d(80, 4, modality, np.random.default_rng(7))
        again = make_phantom_2d(80, 4, modality, np.random.default_rng(7))
        other = make_phantom_2d(80, 4, modality, np.random.default_rng(8))
        assert np.array_equal(image, again[0]) and np.array_equal(instances, again[1])
        assert not np.array_equal(image, other[0])
        assert image.dtype == dtype and image.shape == instances.shape == (80, 80)
        assert 1 <= instances.max() <= 4 and set(np.unique(instances)) == set(range(instances.max() + 1))
        for object_id in range(1, instances.max() + 1):
            inside = instances == object_id
            assert ndimage.label(inside)[1] == 1
            ring = ndimage.binary_dilation(inside, iterations=3) & ~ndimage.binary_dilation(inside)
            assert abs(image[inside].mean() - image[ring].mean()) > 0.5 * image[ring].std()  # visible
    volume, instances = make_phantom_3d((20, 32, 32), 3, "ct", 1)
    assert volume.shape == instances.shape == (20, 32, 32) and instances.max() >= 1
    assert np.array_equal(volume, make_phantom_3d((20, 32, 32), 3, "ct", 1)[0])
    assert volume.min() < -900  # air in HU
