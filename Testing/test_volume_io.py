"""medicosam.volume_io on real files: NIfTI, NRRD, MetaImage, PNG, DICOM files and series."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from medicosam.errors import DataError, InputError, MedicoSAMError
from medicosam.geometry import get_ijk_to_ras_from_sitk
from medicosam.volume_io import Volume, check_mask_path, read_volume, write_mask
from medicosam_training.sample_data import get_itk_examples_dir, get_nilearn_icbm152

PYDICOM_TEST_FILES = Path(get_testdata_file("CT_small.dcm", download=False)).parent
CT_SERIES = PYDICOM_TEST_FILES / "dicomdirtests/98892001/CT5N"  # 5 axial CT slices, 2.5 mm apart
UNEVEN_CT_SERIES = PYDICOM_TEST_FILES / "dicomdirtests/77654033/CT2"  # 4 slices, one 200 mm away
KMEANS = get_itk_examples_dir() / "KmeansTest_T1UCharRaw.nii.gz"
ROTATED_DIRECTION = (0.866025, -0.5, 0.0, 0.433013, 0.75, -0.5, 0.25, 0.433013, 0.866025)


def get_hounsfield_units(path: Path) -> np.ndarray:
    """HU of one DICOM slice computed by pydicom, independently of SimpleITK."""
    dataset = pydicom.dcmread(path)
    return dataset.pixel_array * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)


def get_kmeans_crop() -> sitk.Image:
    """A real 40 x 30 x 20 crop of the ITK T1 volume, on a rotated anisotropic grid."""
    image = sitk.ReadImage(str(KMEANS))[40:80, 50:80, 20:40]
    image.SetDirection(ROTATED_DIRECTION)
    image.SetSpacing((0.9, 1.7, 3.1))
    image.SetOrigin((12.5, -30.25, 101.0))
    return image


def assert_same_grid(image: sitk.Image, volume: Volume, atol: float = 0.0) -> None:
    np.testing.assert_allclose(volume.spacing, image.GetSpacing(), atol=atol)
    np.testing.assert_allclose(volume.origin_lps, image.GetOrigin(), atol=atol)
    np.testing.assert_allclose(volume.direction_lps, image.GetDirection(), atol=atol)


@pytest.mark.parametrize("path", [get_nilearn_icbm152("t1"), KMEANS], ids=["icbm", "kmeans"])
def test_nifti_geometry_matches_nibabel(path):
    volume = read_volume(path)
    image = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(image))
    assert volume.shape_kji == image.GetSize()[::-1]
    # nibabel's affine is the RAS voxel-to-world matrix, computed without SimpleITK.
    np.testing.assert_allclose(volume.ijk_to_ras, nibabel.load(path).affine, atol=1e-4)
    assert volume.path == Path(path)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nii.gz"])
def test_copies_written_by_simpleitk_read_back(tmp_path, suffix):
    image = get_kmeans_crop()
    path = tmp_path / f"copy{suffix}"
    sitk.WriteImage(image, str(path))
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(image))
    assert volume.array.dtype == np.int16
    assert_same_grid(image, volume, atol=1e-5)
    np.testing.assert_allclose(volume.ijk_to_ras, get_ijk_to_ras_from_sitk(image), atol=1e-4)


def test_detached_headers_and_2d_images_read_as_one_slice_volumes():
    folder = get_itk_examples_dir()
    volume = read_volume(folder / "BrainProtonDensitySliceBorder20DirectionPlus30.nhdr")
    assert volume.array.shape == (1, 257, 221)
    direction = np.array(volume.direction_lps).reshape(3, 3)
    np.testing.assert_allclose(direction[:2, :2], [[0.866025, -0.5], [0.5, 0.866025]], atol=1e-5)
    np.testing.assert_allclose(direction[2], [0, 0, 1])
    mhd = read_volume(folder / "BrainProtonDensitySliceShifted13x17y.mhd")
    assert mhd.array.shape == (1, 257, 221) and mhd.array.max() > 0
    assert read_volume(folder / "BrainProtonDensity3Slices.mha").array.shape == (3, 217, 181)


def test_rgb_image_keeps_its_colour():
    volume = read_volume(get_itk_examples_dir() / "VisibleWomanEyeSlice.png")
    assert volume.array.shape == (1, 162, 127, 3) and volume.array.dtype == np.uint8
    assert volume.shape_kji == (1, 162, 127)
    assert not np.array_equal(volume.array[..., 0], volume.array[..., 2])


def test_single_ct_dicom_file_has_hounsfield_units():
    path = PYDICOM_TEST_FILES / "CT_small.dcm"
    volume = read_volume(path)
    assert volume.array.shape == (1, 128, 128)
    np.testing.assert_array_equal(volume.array[0], get_hounsfield_units(path))
    assert volume.array.min() < -800  # air in HU, not raw stored values (which are >= 0 here)
    dataset = pydicom.dcmread(path)
    np.testing.assert_allclose(volume.origin_lps, [float(v) for v in dataset.ImagePositionPatient], atol=1e-4)


def test_multiframe_dicom_file_is_a_volume():
    volume = read_volume(get_testdata_file("emri_small.dcm", download=False))
    assert volume.array.shape == (10, 64, 64)


def test_dicom_series_folder(tmp_path):
    folder = tmp_path / "ct"
    shutil.copytree(CT_SERIES, folder)
    volume = read_volume(folder)
    assert volume.array.shape == (5, 16, 16)
    np.testing.assert_allclose(volume.spacing, (0.488281, 0.488281, 2.5), atol=1e-5)
    by_height = sorted(folder.iterdir(), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    for k, path in enumerate(by_height):
        np.testing.assert_array_equal(volume.array[k], get_hounsfield_units(path))
    lowest = [float(v) for v in pydicom.dcmread(by_height[0]).ImagePositionPatient]
    np.testing.assert_allclose(volume.origin_lps, lowest, atol=1e-4)


def test_folder_with_two_series_lists_them_and_reads_the_chosen_one(tmp_path):
    for source in (CT_SERIES, UNEVEN_CT_SERIES):
        for path in source.iterdir():
            shutil.copy(path, tmp_path / f"{source.name}_{path.name}")
    headers = {source: pydicom.dcmread(next(source.iterdir())) for source in (CT_SERIES, UNEVEN_CT_SERIES)}
    with pytest.raises(DataError) as error:
        read_volume(tmp_path)
    for source, n_files in ((CT_SERIES, 5), (UNEVEN_CT_SERIES, 4)):
        header = headers[source]
        assert f'{header.SeriesInstanceUID} "{header.SeriesDescription}" ({n_files} files)' in str(error.value)
    assert "--series UID" in str(error.value) and "\n" not in str(error.value)
    assert "Python" not in str(error.value) and "Supported formats" not in str(error.value)  # no unrelated list

    volume = read_volume(tmp_path, series_uid=headers[CT_SERIES].SeriesInstanceUID)
    assert volume.array.shape == (5, 16, 16)
    with pytest.raises(DataError, match="uneven or repeated slice positions"):
        read_volume(tmp_path, series_uid=headers[UNEVEN_CT_SERIES].SeriesInstanceUID)
    with pytest.raises(DataError, match="series 1.2.3 is not in the folder: pick one of"):
        read_volume(tmp_path, series_uid="1.2.3")


def test_series_in_sub_folders_are_named_and_itk_stays_quiet(tmp_path, capfd):
    """A study folder whose series sit in sub-folders: GDCM reads no series there and ITK printed two
    "WARNING: ... No Series were found" lines before the error, which named no sub-folder."""
    shutil.copytree(CT_SERIES, tmp_path / "study" / "ct")
    shutil.copytree(UNEVEN_CT_SERIES, tmp_path / "study" / "scout" / "1")
    (tmp_path / "study" / "notes").mkdir()
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    capfd.readouterr()
    with pytest.raises(DataError) as error:
        read_volume(tmp_path / "study")
    assert str(error.value) == (f"Cannot read {tmp_path / 'study'}: the folder holds no DICOM series itself, but its "
                                "sub-folders do: ct (1 series), scout/1 (1 series); give one of them.")
    assert capfd.readouterr().err == ""  # ITK's warnings go straight to file descriptor 2
    assert sitk.ProcessObject.GetGlobalWarningDisplay() == shown
    assert read_volume(tmp_path / "study" / "ct").array.shape == (5, 16, 16)


def test_one_slice_of_a_series_reads_alone():
    assert read_volume(CT_SERIES / "2392").array.shape == (1, 16, 16)


def test_4d_image_is_refused_unless_it_has_one_time_point(tmp_path):
    crop = get_kmeans_crop()
    sitk.WriteImage(sitk.JoinSeries([crop, crop, crop]), str(tmp_path / "t3.nii.gz"))
    with pytest.raises(DataError, match="4D image with 3 time points.*extract one time point"):
        read_volume(tmp_path / "t3.nii.gz")
    sitk.WriteImage(sitk.JoinSeries([crop]), str(tmp_path / "t1.mha"))
    volume = read_volume(tmp_path / "t1.mha")
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(crop))


def test_vector_image_is_refused():
    with pytest.raises(DataError, match="2 values per voxel") as error:
        read_volume(get_itk_examples_dir() / "itkBrainSliceComplex.mha")
    assert isinstance(error.value, MedicoSAMError) and isinstance(error.value, ValueError)


def test_unreadable_inputs_name_the_file_and_the_formats(tmp_path):
    garbage = tmp_path / "scan.nii.gz"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    for path in (garbage, tmp_path / "missing.nrrd"):
        with pytest.raises(DataError) as error:
            read_volume(path)
        assert str(path) in str(error.value) and "Supported formats: NIfTI" in str(error.value)
        assert isinstance(error.value, MedicoSAMError)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no DICOM series"):
        read_volume(tmp_path / "empty")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", ".nii"])
def test_mask_is_written_on_the_input_grid(tmp_path, suffix):
    source = tmp_path / "image.mha"
    sitk.WriteImage(get_kmeans_crop(), str(source))
    volume = read_volume(source)
    mask = (volume.array > np.median(volume.array)).astype(np.uint8) * 3
    path = write_mask(mask, volume, tmp_path / f"mask{suffix}")

    written = sitk.ReadImage(str(path))
    assert written.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), mask)
    # NIfTI stores geometry as float32, NRRD as spacing * direction: equal up to rounding.
    assert_same_grid(written, volume, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["image.mha", path.name])


def test_mask_overwrites_and_keeps_dicom_geometry(tmp_path):
    shutil.copytree(CT_SERIES, tmp_path / "ct")
    volume = read_volume(tmp_path / "ct")
    path = tmp_path / "mask.mha"
    write_mask(np.zeros(volume.shape_kji, bool), volume, path)
    write_mask(volume.array > 0, volume, path)
    written = sitk.ReadImage(str(path))
    assert_same_grid(written, volume)  # MetaImage keeps doubles: bit-identical
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), volume.array > 0)


def test_bad_masks_are_refused_with_the_reason(tmp_path):
    volume = read_volume(KMEANS)
    good = np.zeros(volume.shape_kji, np.uint8)
    with pytest.raises(InputError, match=r"shape \(62, 128, 127\).*\(62, 128, 128\)"):
        write_mask(good[:, :, :127], volume, tmp_path / "mask.nrrd")
    with pytest.raises(InputError, match="0..255"):
        write_mask(good.astype(np.int32) + 300, volume, tmp_path / "mask.nrrd")
    with pytest.raises(InputError, match="use one of .nii, .nii.gz, .nrrd, .mha"):
        write_mask(good, volume, tmp_path / "mask.mhd")
    with pytest.raises(InputError, match="does not exist"):
        write_mask(good, volume, tmp_path / "no" / "mask.nrrd")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, message", [
    ("m.nii.gz.nii.gz", r"doubled suffix \(.nii.gz.nii.gz\).*name it m.nii.gz"),
    ("m.img.nii", r"doubled suffix \(.img.nii\).*name it m.nii"),
    ("M.NII.GZ", "in lower case"),
    ("m.MHA", "in lower case"),
    (".nii.gz", "use one of"),
])
def test_mask_names_the_writer_would_change_are_refused(tmp_path, name, message):
    """ITK writes m.nii.gz.nii.gz as m.nii.gz and .MHA as a .mhd + .zraw pair: files nobody asked for."""
    volume = read_volume(KMEANS)
    with pytest.raises(InputError, match=message):
        write_mask(np.zeros(volume.shape_kji, np.uint8), volume, tmp_path / name)
    assert list(tmp_path.iterdir()) == []  # no stray temporary


def test_mask_destination_is_checked_without_writing(tmp_path):
    assert check_mask_path(tmp_path / "gz.nii.gz") == tmp_path / "gz.nii.gz"
    assert check_mask_path(tmp_path / "a.gz.nii.gz") == tmp_path / "a.gz.nii.gz"  # .gz alone is no NIfTI suffix
    (tmp_path / "folder.nrrd").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        check_mask_path(tmp_path / "folder.nrrd")
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="does not exist"):
        check_mask_path(tmp_path / "file" / "mask.nrrd")
    if Path("/proc").is_dir():  # a folder nobody, root included, may create files in
        with pytest.raises(InputError, match="not writable"):
            check_mask_path("/proc/mask.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder.nrrd"]
