"""Slicer `.seg.nrrd` and DICOM SEG, in and out: `medicosam segment --out`, the training reader, `train`.

Real files all the way: a real CT series (pydicom-data), a real MR (nilearn's ICBM152), files written by
slicerio and highdicom and read back by them, and a tiny real SAM checkpoint.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import slicerio
from pydicom.data import get_testdata_file

from medicosam.cli import main
from medicosam.errors import DataError, InputError
from medicosam.segmentation_files import Segment, read_segments, write_segments
from medicosam.volume_io import read_volume
from medicosam_training.records import get_class_map, get_segmentation_records, read_segment_objects
from medicosam_training.sample_data import get_nilearn_icbm152

CT_SERIES = Path(get_testdata_file("CT_small.dcm", download=False)).parent / "dicomdirtests/98892001/CT5N"


def _segment(image, checkpoint, out, *extra):
    return main(["segment", str(image), "--checkpoint", str(checkpoint), "--allow-custom", "--out", str(out),
                 *extra])


def _get_ijk_to_lps(path) -> np.ndarray:
    image = sitk.ReadImage(str(path))
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


@pytest.fixture(scope="module")
def t1_path():
    return get_nilearn_icbm152("t1")


@pytest.fixture(scope="module")
def mr_case(tmp_path_factory, icbm152):
    """A slab of 5 axial slices of the real MR at 2 mm and its grey / white matter masks, as an NRRD file."""
    folder = tmp_path_factory.mktemp("mr")
    slab = slice(40, 45)
    image = sitk.GetImageFromArray(icbm152["t1"][slab])
    image.SetSpacing((2.0, 2.0, 2.0))
    image.SetOrigin((-98.0, -134.0, -72.0 + 2 * slab.start))
    sitk.WriteImage(image, str(folder / "mr--case0.nrrd"))
    return folder / "mr--case0.nrrd", icbm152["gm"][slab], icbm152["wm"][slab]


def test_segment_writes_dicom_seg_referencing_the_ct_series(tiny_checkpoint, tmp_path, capsys):
    args = ("--ijk", "--point", "8,8,2", "--propagate", "--name", "liver", "--color", "0.8,0.2,0.2")
    assert _segment(CT_SERIES, tiny_checkpoint, tmp_path / "mask.nii.gz", *args) == 0
    assert _segment(CT_SERIES, tiny_checkpoint, tmp_path / "seg.dcm", *args) == 0
    assert "wrote " + str(tmp_path / "seg.dcm") in capsys.readouterr().out
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mask.nii.gz"))).astype(bool)
    assert mask.any()

    dataset = pydicom.dcmread(tmp_path / "seg.dcm")
    assert dataset.SOPClassUID == pydicom.uid.SegmentationStorage and dataset.Modality == "SEG"
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    sources = [pydicom.dcmread(path, stop_before_pixels=True) for path in sorted(CT_SERIES.iterdir())]
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == \
        {source.SOPInstanceUID for source in sources}
    assert seg.NumberOfFrames == int(mask.any(axis=(1, 2)).sum())  # one frame per non-empty slice
    assert seg.get_segment_description(1).segment_label == "liver"
    lab = hd.color.CIELabColor.from_dicom_value(seg.get_segment_description(1).RecommendedDisplayCIELabValue)
    assert np.allclose(lab.to_rgb(), (204, 51, 51), atol=1)

    # Read back on the source series' grid: the same voxels as the label-image output of the same command.
    volume = read_volume(CT_SERIES)
    (segment,) = read_segments(tmp_path / "seg.dcm", volume)
    assert segment.name == "liver" and np.allclose(segment.color, (0.8, 0.2, 0.2), atol=0.005)
    assert np.array_equal(segment.mask, mask)

    # A folder as destination gets one new file named by its SOP Instance UID.
    (tmp_path / "pacs").mkdir()
    assert _segment(CT_SERIES, tiny_checkpoint, tmp_path / "pacs", *args) == 0
    (written,) = (tmp_path / "pacs").iterdir()
    assert written.name == pydicom.dcmread(written).SOPInstanceUID + ".dcm"


def test_dicom_seg_is_refused_for_an_image_that_is_not_a_dicom_series(t1_path, tmp_path, capsys):
    assert _segment(t1_path, tmp_path / "no-model.pt", tmp_path / "seg.dcm", "--point", "0,-20,10") == 2
    error = capsys.readouterr().err
    assert "not a DICOM series" in error and ".seg.nrrd" in error and "Traceback" not in error
    assert list(tmp_path.iterdir()) == []
    assert _segment(t1_path, tmp_path / "no-model.pt", tmp_path / "x.seg.nrrd", "--point", "0,0,0",
                    "--color", "1,0") == 2
    assert "--color 1,0: give red, green and blue in 0..1" in capsys.readouterr().err


def test_segment_writes_seg_nrrd_that_slicerio_and_the_training_reader_read(t1_path, tiny_checkpoint, tmp_path):
    args = ("--point", "0,-20,10", "--propagate", "--max-slices", "2", "--name", "white matter",
            "--color", "0.8,0.2,0.2")
    assert _segment(t1_path, tiny_checkpoint, tmp_path / "mask.nii.gz", *args) == 0
    assert _segment(t1_path, tiny_checkpoint, tmp_path / "result.seg.nrrd", *args) == 0
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mask.nii.gz"))).astype(bool)
    assert mask.any()

    segmentation = slicerio.read_segmentation(str(tmp_path / "result.seg.nrrd"))
    (segment,) = segmentation["segments"]
    assert segment["name"] == "white matter" and segment["color"] == [0.8, 0.2, 0.2]
    assert segment["terminology"]["type"][1] == "85756007"  # Slicer's default "Tissue"
    assert np.allclose(segmentation["ijkToLPS"], _get_ijk_to_lps(t1_path))
    assert segmentation["voxels"].shape == sitk.ReadImage(str(t1_path)).GetSize()
    assert np.array_equal(slicerio.segment_mask(segmentation, "white matter").transpose(2, 1, 0), mask)

    masks, class_ids = read_segment_objects(tmp_path / "result.seg.nrrd", read_volume(t1_path),
                                            get_class_map(["White Matter"]))
    assert masks.shape == (1, *mask.shape) and masks.dtype == bool and class_ids.tolist() == [1]
    assert np.array_equal(masks[0], mask)  # bit-identical through the training reader


def test_overlapping_segments_are_two_layers_and_two_objects(mr_case, tmp_path):
    image_path, gm, wm = mr_case
    volume = read_volume(image_path)
    brain = gm | wm
    path = write_segments([Segment("brain", brain), Segment("white matter", wm, (1.0, 1.0, 0.8))], volume,
                          tmp_path / "mr--case0.seg.nrrd")
    segmentation = slicerio.read_segmentation(str(path))
    assert segmentation["voxels"].ndim == 4 and segmentation["voxels"].shape[0] == 2  # two layers
    masks, class_ids = read_segment_objects(path, volume)
    assert masks.shape[0] == 2 and class_ids.tolist() == [1, 2]
    assert np.array_equal(masks[0], brain) and np.array_equal(masks[1], wm) and (masks[0] & masks[1]).any()

    from medicosam_training.dataset import VolumeSliceDataset

    dataset = VolumeSliceDataset([image_path], [path], image_size=64, n_obj=5, min_size=5, label_mode="instance")
    sample = dataset[0]
    assert sample["masks"].shape[0] == 2 and (sample["masks"][0] & sample["masks"][1]).any()


def test_cropped_seg_nrrd_is_pasted_and_a_foreign_grid_names_both_files(mr_case, tmp_path):
    image_path, gm, _ = mr_case
    volume = read_volume(image_path)
    # Slicer's "crop to minimum extent": the segmentation covers voxels i 10..59, j 20..79, k 1..3 only.
    crop = np.zeros(gm.shape, bool)
    crop[1:4, 20:80, 10:60] = gm[1:4, 20:80, 10:60]
    ijk_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.ijk_to_ras
    segmentation = slicerio.create_segmentation((50, 60, 3), ijk_to_lps @ np.array(
        [[1, 0, 0, 10], [0, 1, 0, 20], [0, 0, 1, 1], [0, 0, 0, 1]], float))
    slicerio.add_segment(segmentation, crop[1:4, 20:80, 10:60].transpose(2, 1, 0), {"name": "gm"})
    slicerio.write_segmentation(str(tmp_path / "cropped.seg.nrrd"), segmentation)
    (segment,) = read_segments(tmp_path / "cropped.seg.nrrd", volume)
    assert np.array_equal(segment.mask, crop)

    other = sitk.ReadImage(str(image_path))
    other.SetOrigin((0.5, 0.0, 0.0))  # half a voxel off: not on the image's grid
    sitk.WriteImage(other, str(tmp_path / "other.nrrd"))
    write_segments([Segment("gm", gm)], read_volume(tmp_path / "other.nrrd"), tmp_path / "other.seg.nrrd")
    with pytest.raises(DataError) as error:
        read_segments(tmp_path / "other.seg.nrrd", volume)
    assert str(tmp_path / "other.seg.nrrd") in str(error.value) and str(image_path) in str(error.value)


def test_class_names_map_to_ids_and_unknown_names_are_reported(mr_case, tmp_path):
    image_path, gm, wm = mr_case
    volume = read_volume(image_path)
    path = write_segments([Segment("Gray matter", gm), Segment("white matter", wm), Segment("skull", wm & gm)],
                          volume, tmp_path / "c.seg.nrrd")
    with pytest.raises(DataError, match=r"'skull' not in the class map \(gray matter, white matter\)"):
        read_segment_objects(path, volume, get_class_map(["gray matter", "white matter"]))
    (tmp_path / "classes.json").write_text(json.dumps({"white matter": 1, "gray matter": 2, "skull": 0}))
    masks, class_ids = read_segment_objects(path, volume, get_class_map([str(tmp_path / "classes.json")]))
    assert class_ids.tolist() == [2, 1] and np.array_equal(masks[1], wm)
    with pytest.raises(InputError, match="given twice"):
        get_class_map(["liver", "Liver"])


def test_dicom_seg_beside_its_series_is_a_training_record(tmp_path):
    shutil.copytree(CT_SERIES, tmp_path / "data" / "ct--case0")
    volume = read_volume(tmp_path / "data" / "ct--case0")
    mask = np.zeros(volume.shape_kji, bool)
    mask[1:4, 4:12, 3:10] = True
    write_segments([Segment("liver", mask)], volume, tmp_path / "data" / "export.dcm")
    (record,) = get_segmentation_records(tmp_path / "data")
    assert record.image == str(tmp_path / "data" / "ct--case0") and record.modality == "ct"
    masks, _ = read_segment_objects(record.labels[0], read_volume(record.image), get_class_map(["liver"]))
    assert np.array_equal(masks[0], mask)


def test_train_on_a_folder_of_volumes_and_seg_nrrd(mr_case, tiny_checkpoint, tmp_path, capsys):
    image_path, gm, wm = mr_case
    data = tmp_path / "data"
    data.mkdir()
    for case in range(2):
        shutil.copy(image_path, data / f"mr--case{case}.nrrd")
        write_segments([Segment("Gray matter", gm), Segment("White matter", wm)], read_volume(image_path),
                       data / f"mr--case{case}.seg.nrrd")
    assert len(get_segmentation_records(data)) == 2
    out = tmp_path / "out"
    common = ["train", "--preset", "medsam", "--data", str(data), "--checkpoint", str(tiny_checkpoint),
              "--val-fraction", "0", "--iterations", "2", "--quiet", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "bad"), "--classes", "gray matter"]) == 2
    assert "'White matter' not in the class map" in capsys.readouterr().err
    assert main([*common, "--out", str(out), "--classes", "gray matter", "white matter"]) == 0
    assert "trained iterations 0 -> 2" in capsys.readouterr().out and (out / "model.pt").is_file()


def test_seg_nrrd_headers_that_do_not_match_the_data_are_one_line_errors_naming_the_header(mr_case, tmp_path,
                                                                                          tiny_checkpoint, capsys):
    image_path, gm, wm = mr_case
    volume = read_volume(image_path)
    good = write_segments([Segment("brain", gm | wm), Segment("white matter", wm), Segment("empty", wm & False)],
                          volume, tmp_path / "good.seg.nrrd")  # two layers; an empty segment is fine
    assert [segment.mask.sum() > 0 for segment in read_segments(good, volume)] == [True, True, False]
    header_end = good.read_bytes().index(b"\n\n")

    def with_header(name: str, old: bytes, new: bytes) -> Path:
        data = good.read_bytes()
        assert old in data[:header_end]
        path = tmp_path / name / "mr--case0.seg.nrrd"
        path.parent.mkdir()
        path.write_bytes(data[:header_end].replace(old, new) + data[header_end:])
        return path

    cases = {with_header("layer", b"Segment1_Layer:=1", b"Segment1_Layer:=5"):
             "Segment1_Layer=5, but the file holds 2 layer(s)",
             with_header("label", b"Segment0_LabelValue:=1", b"Segment0_LabelValue:=7"):
             "Segment0_LabelValue=7 does not occur in layer 0, though Segment0_Extent="}
    plain = tmp_path / "plain" / "mr--case0.seg.nrrd"  # a label image under a segmentation's name
    plain.parent.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(image_path)), str(plain))
    cases[plain] = "has no segment header (Segment0_ID"
    for path, message in cases.items():
        with pytest.raises(DataError, match=re.escape(message)):
            read_segments(path, volume)
        shutil.copy(image_path, path.parent / "mr--case0.nrrd")  # the training reader, through `train`
        assert main(["train", "--preset", "medsam", "--data", str(path.parent), "--checkpoint", str(tiny_checkpoint),
                     "--val-fraction", "0", "--iterations", "1", "--quiet", "--out", str(path.parent / "out")]) == 2
        err = capsys.readouterr().err
        assert message in err and str(path) in err and len(err.strip().splitlines()) == 1
