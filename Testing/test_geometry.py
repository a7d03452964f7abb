"""medicosam.geometry against SimpleITK's own index <-> physical point transforms on real volumes."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medicosam.errors import MedicoSAMError
from medicosam.geometry import (
    InputError,
    PointOutsideVolumeError,
    get_ijk_to_ras_from_sitk,
    get_slice_axis,
    get_slice_point,
    get_voxel_index,
    ijk_to_ras,
    ras_to_array_index,
    ras_to_ijk,
)
from medicosam.markups import Markups, get_markup_prompts, get_roi_from_corners
from medicosam_training.sample_data import get_itk_examples_dir, get_nilearn_icbm152

LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])
AXIAL, CORONAL, SAGITTAL = (0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)


def get_rotation(angles_deg) -> np.ndarray:
    """A proper rotation (det +1) from Euler angles about x, y, z."""
    ax, ay, az = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def read_image(name: str) -> sitk.Image:
    path = (
        get_nilearn_icbm152("t1")
        if name == "icbm"
        else get_itk_examples_dir() / "KmeansTest_T1UCharRaw.nii.gz"
    )
    return sitk.ReadImage(str(path))


def with_geometry(image: sitk.Image, variant: str) -> sitk.Image:
    """The real image with a changed direction (rotated / flipped) or spacing (anisotropic)."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if variant == "rotated":
        image.SetDirection(tuple((get_rotation((20, -35, 50)) @ direction).ravel()))
    elif variant == "flipped":
        image.SetDirection(tuple((direction * np.array([-1.0, 1.0, -1.0])).ravel()))
    elif variant == "anisotropic":
        image.SetSpacing((0.7, 1.3, 4.0))
        image.SetOrigin((-12.5, 40.25, 7.0))
    return image


@pytest.fixture(scope="module", params=["icbm", "kmeans"])
def real_image(request) -> sitk.Image:
    return read_image(request.param)


@pytest.mark.parametrize("variant", ["as_read", "rotated", "flipped", "anisotropic"])
def test_round_trips_match_simpleitk(real_image, variant):
    image = with_geometry(sitk.Image(real_image), variant)
    matrix = get_ijk_to_ras_from_sitk(image)
    size = np.array(image.GetSize())
    rng = np.random.default_rng(1)
    points_ijk = rng.uniform(-0.4, size - 0.6, size=(50, 3))

    points_ras = ijk_to_ras(points_ijk, matrix)
    expected_ras = (
        np.array([image.TransformContinuousIndexToPhysicalPoint(p) for p in points_ijk]) * LPS_TO_RAS
    )
    np.testing.assert_allclose(points_ras, expected_ras, atol=1e-6)

    expected_ijk = [image.TransformPhysicalPointToContinuousIndex(p * LPS_TO_RAS) for p in points_ras]
    np.testing.assert_allclose(ras_to_ijk(points_ras, matrix), expected_ijk, atol=1e-6)
    np.testing.assert_allclose(ras_to_ijk(points_ras[0], matrix), points_ijk[0], atol=1e-6)

    shape_kji = image.GetSize()[::-1]
    for point in points_ras[:20]:
        expected_index_ijk = image.TransformPhysicalPointToIndex(tuple(point * LPS_TO_RAS))
        assert ras_to_array_index(point, matrix, shape_kji) == expected_index_ijk[::-1]


def test_voxel_centres_map_to_their_array_index():
    image = with_geometry(read_image("kmeans"), "rotated")
    matrix = get_ijk_to_ras_from_sitk(image)
    array = sitk.GetArrayViewFromImage(image)
    for index_ijk in [(0, 0, 0), (127, 127, 61), (5, 100, 30)]:
        centre_lps = image.TransformIndexToPhysicalPoint(index_ijk)
        index_kji = ras_to_array_index(np.array(centre_lps) * LPS_TO_RAS, matrix, array.shape)
        assert index_kji == index_ijk[::-1]
        assert array[index_kji] == image.GetPixel(index_ijk)


def test_known_geometry_of_the_kmeans_volume():
    """The file stores I along L, J along S and K along P-flipped (A); check the RAS matrix literally."""
    image = read_image("kmeans")
    matrix = get_ijk_to_ras_from_sitk(image)
    expected = np.array([[-2.0, 0, 0, 0], [0, 0, 3.0, -254.0], [0, 2.0, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(matrix, expected, atol=1e-12)
    assert get_slice_axis(CORONAL, matrix) == 0
    assert get_slice_axis(AXIAL, matrix) == 1
    assert get_slice_axis(SAGITTAL, matrix) == 2


def test_slice_axis_of_standard_views():
    matrix = get_ijk_to_ras_from_sitk(read_image("icbm"))
    assert [get_slice_axis(n, matrix) for n in (AXIAL, CORONAL, SAGITTAL)] == [0, 1, 2]
    assert get_slice_axis((0.0, 0.0, -1.0), matrix) == 0  # the normal's sign does not matter


def test_slice_axis_follows_a_rotated_volume():
    image = read_image("icbm")
    direction = np.array(image.GetDirection()).reshape(3, 3)
    image.SetDirection(tuple((get_rotation((0, 0, 90)) @ direction).ravel()))
    matrix = get_ijk_to_ras_from_sitk(image)
    # A 90 degree turn about S swaps the in-plane axes: I now runs along A, J along R.
    assert [get_slice_axis(n, matrix) for n in (AXIAL, CORONAL, SAGITTAL)] == [0, 2, 1]

    image.SetDirection(tuple((get_rotation((20, -35, 50)) @ direction).ravel()))
    matrix = get_ijk_to_ras_from_sitk(image)
    for array_axis in range(3):
        normal = matrix[:3, 2 - array_axis] * 3.0  # any length
        assert get_slice_axis(normal, matrix) == array_axis
    with pytest.raises(InputError):
        get_slice_axis(AXIAL, matrix)


def test_oblique_view_is_refused_and_small_deviations_are_tolerated():
    matrix = get_ijk_to_ras_from_sitk(read_image("icbm"))
    assert get_slice_axis(get_rotation((0.5, 0, 0)) @ np.array(AXIAL), matrix) == 0
    with pytest.raises(InputError) as error:
        get_slice_axis(get_rotation((30, 0, 0)) @ np.array(AXIAL), matrix)
    message = str(error.value)
    assert "30.0 degrees" in message and "Rotate to volume plane" in message
    assert isinstance(error.value, MedicoSAMError) and isinstance(error.value, ValueError)
    with pytest.raises(ValueError, match="non-zero"):
        get_slice_axis((0.0, 0.0, 0.0), matrix)


def test_point_outside_volume_names_point_and_extent():
    image = read_image("kmeans")
    matrix = get_ijk_to_ras_from_sitk(image)
    shape = image.GetSize()[::-1]
    with pytest.raises(PointOutsideVolumeError) as error:
        ras_to_array_index((500.0, 0.0, 0.0), matrix, shape)
    message = str(error.value)
    assert "RAS (500.0, 0.0, 0.0)" in message
    assert "128 x 128 x 62 voxels" in message
    assert "Place the point inside the volume" in message
    assert isinstance(error.value, MedicoSAMError) and isinstance(error.value, ValueError)
    # Half a voxel past the last centre is outside; just inside it is the last voxel.
    last_i = ijk_to_ras(np.array([127.49, 10, 10]), matrix)
    assert ras_to_array_index(last_i, matrix, shape) == (10, 10, 127)
    with pytest.raises(PointOutsideVolumeError):
        ras_to_array_index(ijk_to_ras(np.array([127.51, 10, 10]), matrix), matrix, shape)
    with pytest.raises(PointOutsideVolumeError):
        ras_to_array_index((np.nan, 0.0, 0.0), matrix, shape)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_points_index_the_slice_that_np_take_returns(axis):
    volume = sitk.GetArrayFromImage(read_image("kmeans"))
    rng = np.random.default_rng(axis)
    for index in zip(*(rng.integers(0, n, 30) for n in volume.shape)):
        slice_index, x, y = get_slice_point(index, axis)
        assert np.take(volume, slice_index, axis)[y, x] == volume[index]
        assert get_voxel_index(slice_index, x, y, axis) == tuple(int(v) for v in index)


def test_slice_layout_follows_the_architecture_conventions():
    index = (3, 5, 7)  # (k, j, i)
    assert get_slice_point(index, 0) == (3, 7, 5)  # rows J, cols I
    assert get_slice_point(index, 1) == (5, 7, 3)  # rows K, cols I
    assert get_slice_point(index, 2) == (7, 5, 3)  # rows K, cols J
    with pytest.raises(ValueError, match="axis must be"):
        get_slice_point(index, 3)


def test_box_from_two_corners_on_a_rotated_volume():
    """`segment --box`: an ROI on the slice of the corners' centre, with the volume's axes; its box prompt there
    holds every pixel a corner falls in and everything between, clipped to the slice."""
    image = with_geometry(read_image("kmeans"), "rotated")
    matrix = get_ijk_to_ras_from_sitk(image)
    shape = image.GetSize()[::-1]

    def corner(index_kji, offset):
        return ijk_to_ras(np.array(index_kji[::-1], float) + offset, matrix)

    def get_boxes(a, b, axis):
        roi = get_roi_from_corners(a, b, matrix, shape, axis)
        return {index: tuple(prompts.box.tolist())
                for index, prompts in get_markup_prompts(Markups(rois=[roi]), matrix, shape, axis).items()}

    # Corners dragged from voxel (k=30, j=90, i=20) to (30, 40, 60), anywhere inside those voxels.
    a, b = corner((30, 90, 20), (0.3, -0.4, 0.1)), corner((30, 40, 60), (-0.2, 0.4, -0.3))
    assert get_boxes(a, b, axis=0) == {30: (20, 40, 61, 91)}
    # On a sagittal-like slice (axis 2 = I): rows K, cols J.
    a, b = corner((10, 5, 70), (0, 0, 0)), corner((50, 9, 70), (0, 0, 0))
    assert get_boxes(a, b, axis=2) == {70: (5, 10, 10, 51)}
    # A corner past the edge is clipped to the slice.
    a = corner((30, 90, 20), (-25.0, 0, 0))
    assert get_boxes(a, corner((30, 100, 40), (0, 0, 0)), axis=0) == {30: (0, 90, 41, 101)}
    with pytest.raises(PointOutsideVolumeError):
        get_boxes(corner((30, 0, 200), (0, 0, 0)), corner((30, 0, 300), (0, 0, 0)), axis=0)
