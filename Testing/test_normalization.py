"""medicosam.normalization on real CT (HU), MR, 8/16-bit and RGB images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from medicosam.errors import MedicoSAMError
from medicosam.normalization import (
    PRESETS,
    InputError,
    IntensityWindow,
    get_intensity_window,
    get_rgb_uint8,
)
from medicosam_training.sample_data import get_itk_examples_dir, get_nilearn_icbm152

CT_SERIES = Path(get_testdata_file("CT_small.dcm", download=False)).parent / "dicomdirtests/98892001/CT5N"


def read_array(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def read_ct_series() -> np.ndarray:
    """5 real CT slices in HU (SimpleITK applies the DICOM rescale slope and intercept)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(CT_SERIES)))
    return sitk.GetArrayFromImage(reader.Execute())


def assert_sam_input(image: np.ndarray, shape2d) -> None:
    assert image.dtype == np.uint8 and image.shape == (*shape2d, 3)


def assert_one_grey_per_value(volume: np.ndarray, window: IntensityWindow) -> None:
    """Applied slice by slice, every voxel value maps to the same grey on every slice."""
    greys = np.stack([window.apply(s)[..., 0] for s in volume])
    pairs = np.unique(np.stack([volume.ravel().astype(np.float64), greys.ravel()]), axis=1)
    assert pairs.shape[1] == np.unique(volume).size


def test_ct_in_hounsfield_units_gets_the_soft_tissue_window():
    ct = read_array(get_testdata_file("CT_small.dcm", download=False))
    assert ct.min() < -800  # real HU
    window = get_intensity_window(ct)
    assert window == IntensityWindow(-160.0, 240.0)
    image = window.apply(ct[0])
    assert_sam_input(image, ct.shape[1:])
    expected = np.clip(np.round((ct[0].astype(np.float64) + 160) / 400 * 255), 0, 255)
    assert np.abs(image[..., 0].astype(int) - expected).max() <= 1
    assert (image[ct[0] <= -160] == 0).all() and (image[ct[0] >= 240] == 255).all()
    assert np.array_equal(image[..., 0], image[..., 2])


def test_ct_series_slices_share_one_window():
    ct = read_ct_series()
    window = get_intensity_window(ct)
    assert window.key == get_intensity_window(ct[2:3]).key  # same preset window, whatever the slice range
    assert_one_grey_per_value(ct, window)


def test_ct_presets_use_standard_width_and_level():
    ct = read_ct_series()
    assert get_intensity_window(ct, "ct_soft_tissue") == IntensityWindow(-160, 240)  # W400 L40
    assert get_intensity_window(ct, "ct_lung") == IntensityWindow(-1350, 150)  # W1500 L-600
    assert get_intensity_window(ct, "ct_bone") == IntensityWindow(-500, 1300)  # W1800 L400
    # Float HU (integral values) are still CT; float MR with negative values is not.
    assert get_intensity_window(ct.astype(np.float32)) == IntensityWindow(-160, 240)
    scaled = ct.astype(np.float32) * 0.37
    assert get_intensity_window(scaled) == get_intensity_window(scaled, "percentile")


def test_mr_16bit_uses_volume_percentiles():
    mr = read_array(get_itk_examples_dir() / "KmeansTest_T1UCharRaw.nii.gz")
    assert mr.dtype == np.int16
    window = get_intensity_window(mr)
    low, high = np.percentile(mr, (0.5, 99.5))
    assert (window.low, window.high) == (low, high)
    assert_one_grey_per_value(mr[20:40], window)
    image = window.apply(mr[30])
    assert_sam_input(image, mr.shape[1:])
    assert image.min() == 0 and image.max() == 255


def test_unsigned_16bit_dicom_mr():
    mr = read_array(get_testdata_file("emri_small.dcm", download=False))
    assert mr.dtype == np.uint16 and mr.max() > 255
    window = get_intensity_window(mr)
    assert 0 <= window.low < window.high <= mr.max()
    assert_sam_input(window.apply(mr[4]), mr.shape[1:])


def test_large_volume_percentiles_come_from_a_deterministic_sample():
    t1 = read_array(get_nilearn_icbm152("t1")).astype(np.float32) * 3.3 + 10.0  # 8.7 M voxels
    window = get_intensity_window(t1, "percentile")
    assert window == get_intensity_window(t1.copy(), "percentile")
    exact_low, exact_high = np.percentile(t1, (0.5, 99.5))
    assert abs(window.low - exact_low) <= 0.01 * (exact_high - exact_low)
    assert abs(window.high - exact_high) <= 0.01 * (exact_high - exact_low)


def test_uint8_passes_through_unchanged():
    t1 = read_array(get_nilearn_icbm152("t1"))
    assert t1.dtype == np.uint8
    window = get_intensity_window(t1)
    assert window == IntensityWindow(0, 255)
    image = window.apply(t1[90])
    np.testing.assert_array_equal(image, np.repeat(t1[90][:, :, None], 3, axis=2))


def test_rgb_8bit_and_16bit():
    rgb = read_array(get_itk_examples_dir() / "VisibleWomanEyeSlice.png")[None]  # (1, H, W, 3)
    window = get_intensity_window(rgb)
    np.testing.assert_array_equal(window.apply(rgb[0]), rgb[0])
    rgb16 = rgb.astype(np.uint16) * 257
    image = get_intensity_window(rgb16, "minmax").apply(rgb16[0])
    assert_sam_input(image, rgb.shape[1:3])
    lo, hi = int(rgb.min()), int(rgb.max())
    expected = np.round((rgb[0].astype(np.float64) - lo) / (hi - lo) * 255)
    assert np.abs(image.astype(int) - expected).max() <= 1


def test_rgb_uint8_adapter_keeps_8bit_and_windows_the_rest():
    """The one adapter to SAM's input that training, semantic data and evaluation share."""
    t1 = read_array(get_nilearn_icbm152("t1"))[90]  # 8-bit grey: replicated as it is
    np.testing.assert_array_equal(get_rgb_uint8(t1), np.repeat(t1[:, :, None], 3, axis=2))
    rgb = read_array(get_itk_examples_dir() / "VisibleWomanEyeSlice.png")  # 8-bit RGB: untouched
    assert get_rgb_uint8(rgb) is rgb
    t1_16 = t1.astype(np.uint16) * 40 + 3  # 16-bit: its own "auto" window, or the volume's when given
    np.testing.assert_array_equal(get_rgb_uint8(t1_16), get_intensity_window(t1_16).apply(t1_16))
    window = IntensityWindow(0, 4000)
    np.testing.assert_array_equal(get_rgb_uint8(t1_16, window), window.apply(t1_16))


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_constant_volume_gives_zeros(dtype):
    volume = np.full((3, 20, 30), 7, dtype)
    for preset in ("auto", "percentile", "minmax"):
        image = get_intensity_window(volume, preset).apply(volume[1])
        assert_sam_input(image, (20, 30))
        assert (image == (7 if preset == "auto" and dtype == np.uint8 else 0)).all()


def test_nan_voxels_map_to_the_window_low(caplog):
    t1 = read_array(get_nilearn_icbm152("t1"))[60:100, 80:160, 50:150].astype(np.float32)
    with_nan = t1.copy()
    with_nan[:, :40, :50] = np.nan
    with_nan[0, 0, 0], with_nan[0, 0, 1] = np.inf, -np.inf
    for preset in ("auto", "percentile", "minmax"):
        window = get_intensity_window(with_nan, preset)
        assert np.isfinite(window.low) and np.isfinite(window.high)
        assert window == get_intensity_window(with_nan[np.isfinite(with_nan)].reshape(1, 1, -1), preset)
    image = window.apply(with_nan[20])
    assert_sam_input(image, with_nan.shape[1:])
    assert (image[:40, :50] == 0).all()
    np.testing.assert_array_equal(image[40:], window.apply(t1[20])[40:])
    assert "no finite intensity" not in caplog.text
    all_nan = np.full((2, 4, 4), np.nan, np.float32)
    with caplog.at_level("WARNING", logger="medicosam.normalization"):
        assert (get_intensity_window(all_nan).apply(all_nan[0]) == 0).all()
    assert "no finite intensity" in caplog.text and "masks will be empty" in caplog.text


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(InputError) as error:
        get_intensity_window(np.zeros((1, 2, 2)), "ct_brain")
    assert "'ct_brain'" in str(error.value)
    assert all(name in str(error.value) for name in PRESETS)
    assert isinstance(error.value, MedicoSAMError) and isinstance(error.value, ValueError)


def test_window_validation_and_cache_key():
    assert IntensityWindow(0, 255).key == IntensityWindow(0.0, 255.0).key
    assert IntensityWindow(0, 255).key != IntensityWindow(0, 255.0001).key
    with pytest.raises(ValueError, match="low <= high"):
        IntensityWindow(10, 5)
    with pytest.raises(ValueError, match="low <= high"):
        IntensityWindow(float("nan"), 5)
    with pytest.raises(ValueError, match="grey"):
        IntensityWindow(0, 1).apply(np.zeros((4, 4, 2)))
