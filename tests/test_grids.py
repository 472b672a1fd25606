"""Grids: torchvision's layout to the byte, and class names in a margin."""

import numpy as np
import pytest
import torch
from PIL import Image

from spherear.grids import save_grid


@pytest.mark.parametrize("n, nrow", [(7, 3), (32, 4), (10, 10)])
def test_grid_is_byte_identical_to_torchvision(tmp_path, n, nrow):
    from torchvision.utils import save_image

    images = torch.rand(n, 3, 8, 6, generator=torch.Generator().manual_seed(n)) * 2.2 - 1.1
    save_image(((images + 1) / 2).clamp(0, 1), tmp_path / "torchvision.png", nrow=nrow)
    save_grid(images, tmp_path / "grid.png", nrow)
    ours = np.asarray(Image.open(tmp_path / "grid.png"))
    assert np.array_equal(ours, np.asarray(Image.open(tmp_path / "torchvision.png")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "torchvision.png"]


def test_row_labels_go_in_a_margin_left_of_an_unchanged_grid(tmp_path):
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    save_grid(images, tmp_path / "plain.png", 3)
    save_grid(images, tmp_path / "named.png", 3, row_labels=["cat", "a much longer name"])
    plain = np.asarray(Image.open(tmp_path / "plain.png"))
    named = np.asarray(Image.open(tmp_path / "named.png"))
    margin = named.shape[1] - plain.shape[1]
    assert named.shape[0] == plain.shape[0] and margin > 0
    assert np.array_equal(named[:, margin:], plain)  # the images are where they were
    rows = [named[2 + r * 18 : 2 + r * 18 + 16, :margin] for r in range(2)]
    widths = [np.flatnonzero(row.max((0, 2)) > 0).max() for row in rows]  # text drawn in white
    assert 0 < widths[0] < widths[1] < margin  # each name on its own row, the longer wider
