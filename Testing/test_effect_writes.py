"""What the effect erases before it adds a block of masks (`WriteBlock.get_removed`)."""

from __future__ import annotations

import numpy as np

from medicosam.effect.session import WriteBlock


def test_only_voxels_the_new_masks_drop_are_removed():
    """With the editable area "inside a single segment" Slicer gives erased voxels to the masking segment,
    so erasing whole slices (or the old content) before adding would hand it voxels the new mask keeps."""
    rng = np.random.default_rng(0)
    segment = rng.random((5, 6, 7)) > 0.5
    for axis in range(3):
        shape = [n for a, n in enumerate(segment.shape) if a != axis]
        masks = rng.random((2, *shape)) > 0.5
        block = WriteBlock(axis, 1, 3, masks)
        old = segment[block.get_region()]
        removed = block.get_removed(segment.astype(np.uint8))
        assert removed.dtype == bool and removed.shape == old.shape
        assert np.array_equal(removed, old & ~block.get_array())
        after = segment.copy()  # Remove, then Add, as the effect does: the block ends up as the masks
        after[block.get_region()] &= ~removed
        after[block.get_region()] |= block.get_array()
        expected = segment.copy()
        expected[block.get_region()] = block.get_array()
        assert np.array_equal(after, expected)
