"""Samples files: arr_0 read by index range, the same from a stored (memory-mapped) or a
compressed archive; other arrays and copies cut short refused in one line."""

import numpy as np
import pytest

from spherear.errors import SpherearError
from spherear.eval.npz import NpzImages


def test_stored_and_compressed_archives_read_the_same_ranges(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "stored.npz", images)
    np.savez_compressed(tmp_path / "compressed.npz", images)
    for name in ("stored.npz", "compressed.npz"):
        npz = NpzImages(tmp_path / name)
        assert (len(npz), npz.resolution) == (5, (4, 6))
        assert np.array_equal(npz.read(1, 4), images[1:4])


def test_other_arrays_and_truncated_copies_are_refused(tmp_path):
    np.savez(tmp_path / "float.npz", np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(SpherearError, match=r"arr_0 is float32 with shape \(2, 4, 4, 3\)"):
        NpzImages(tmp_path / "float.npz")
    np.savez(tmp_path / "other.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(SpherearError, match=r"no arr_0 array \(it holds images\)"):
        NpzImages(tmp_path / "other.npz")
    np.savez(tmp_path / "cut.npz", np.zeros((50, 32, 32, 3), np.uint8))
    with open(tmp_path / "cut.npz", "r+b") as f:  # a copy cut short: the zip directory lost
        f.truncate(10_000)
    with pytest.raises(SpherearError, match=r"cut.npz: not an .npz file \(not a zip archive\)"):
        NpzImages(tmp_path / "cut.npz")
