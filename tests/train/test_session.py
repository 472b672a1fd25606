import numpy as np
import pytest
import torch
from PIL import Image

from spherear.train.session import save_grid


@pytest.mark.parametrize("n, nrow", [(7, 3), (32, 4), (10, 10)])
def test_grid_is_byte_identical_to_torchvision(tmp_path, n, nrow):
    from torchvision.utils import save_image

    images = torch.rand(n, 3, 8, 6, generator=torch.Generator().manual_seed(n)) * 2.2 - 1.1
    save_image(((images + 1) / 2).clamp(0, 1), tmp_path / "torchvision.png", nrow=nrow)
    save_grid(images, tmp_path / "grid.png", nrow)
    ours = np.asarray(Image.open(tmp_path / "grid.png"))
    assert np.array_equal(ours, np.asarray(Image.open(tmp_path / "torchvision.png")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "torchvision.png"]
