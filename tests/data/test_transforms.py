import numpy as np
import pytest
import torch
from PIL import Image

from spherear.data.transforms import (
    center_crop,
    random_crop,
    random_crop_share,
    to_tensor,
    train_view,
)


def _gradient(w: int, h: int) -> Image.Image:
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8))


def test_center_crop_box_halves_then_bicubic_and_centres():
    image = _gradient(1100, 600)
    out = center_crop(image, 128)
    assert out.size == (128, 128)
    # ADM by hand: 1100x600 -> box halves while the short side >= 256: 550x300, 275x150
    # -> bicubic to round(275 * 128 / 150) = 235 x 128 -> centre crop
    ref = image.resize((550, 300), Image.BOX).resize((275, 150), Image.BOX)
    ref = ref.resize((235, 128), Image.BICUBIC)
    ref = ref.crop((53, 0, 181, 128))
    assert np.array_equal(np.asarray(out), np.asarray(ref))


def test_random_crop_covers_80_to_100_percent_of_the_short_side():
    image = _gradient(200, 100)
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert random_crop(image, 32, 0.8, rng).size == (32, 32)
    # a crop that covers the whole short side of a square image is the whole image
    square = _gradient(64, 64)
    full = random_crop(square, 64, 1.0, np.random.default_rng(0))
    assert np.array_equal(np.asarray(full), np.asarray(square))


def test_crop_schedule():
    assert random_crop_share(0, 350, 375) == 1.0
    assert random_crop_share(350, 350, 375) == 1.0
    assert random_crop_share(362.5, 350, 375) == pytest.approx(0.5)
    assert random_crop_share(375, 350, 375) == 0.0
    assert random_crop_share(399, 350, 375) == 0.0


def test_train_view_after_the_schedule_is_a_centre_crop_or_its_flip():
    image = _gradient(90, 70)
    centre = np.asarray(center_crop(image, 32))
    seen = set()
    for seed in range(12):
        view = np.asarray(train_view(image, 32, 380, np.random.default_rng(seed)))
        flipped = np.array_equal(view, centre[:, ::-1])
        assert np.array_equal(view, centre) or flipped
        seen.add(flipped)
    assert seen == {True, False}


def test_to_tensor_range():
    t = to_tensor(Image.fromarray(np.array([[[0, 255, 128]]], dtype=np.uint8)))
    assert t.shape == (3, 1, 1)
    torch.testing.assert_close(t.flatten(), torch.tensor([-1.0, 1.0, 128 / 127.5 - 1]))
