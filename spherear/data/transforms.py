"""Image crops for training and evaluation: the ADM centre crop, the paper's random crops,
and the schedule that moves from one to the other.

Images are PIL RGB in and out; ``to_tensor`` maps them to (3, H, W) floats in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from PIL import Image


def _box_halve(image: Image.Image, size: int) -> Image.Image:
    """Halve with a box filter while the short side is at least twice ``size``, so the
    final bicubic resize never aliases (ADM's recipe)."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    return image


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """ADM centre crop: box-halve, resize the short side to ``size`` with bicubic, then
    take the central square."""
    image = _box_halve(image, size)
    scale = size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def random_crop(
    image: Image.Image, size: int, min_fraction: float, rng: np.random.Generator
) -> Image.Image:
    """A square covering ``min_fraction``..1 of the short side at a random place,
    resized to ``size``."""
    w, h = image.size
    side = max(1, round(min(w, h) * rng.uniform(min_fraction, 1.0)))
    left = int(rng.integers(0, w - side + 1))
    top = int(rng.integers(0, h - side + 1))
    square = _box_halve(image.crop((left, top, left + side, top + side)), size)
    return (
        square.resize((size, size), resample=Image.BICUBIC)
        if square.size != (size, size)
        else square
    )


def random_crop_share(epoch: float, start_epoch: int, end_epoch: int) -> float:
    """Share of samples that get a random crop: 1 until ``start_epoch``, falling linearly to
    0 at ``end_epoch``, 0 after (centre crops only)."""
    if epoch <= start_epoch:
        return 1.0
    if epoch >= end_epoch:
        return 0.0
    return 1.0 - (epoch - start_epoch) / (end_epoch - start_epoch)


def train_view(
    image: Image.Image,
    size: int,
    epoch: float,
    rng: np.random.Generator,
    min_fraction: float = 0.8,
    hflip: bool = True,
    decay: tuple[int, int] = (350, 375),
) -> Image.Image:
    """The paper's training augmentation for one image at ``epoch``."""
    if rng.uniform() < random_crop_share(epoch, *decay):
        view = random_crop(image, size, min_fraction, rng)
    else:
        view = center_crop(image, size)
    if hflip and rng.uniform() < 0.5:
        view = view.transpose(Image.FLIP_LEFT_RIGHT)
    return view


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float32 in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def center_crops(
    images: Sequence[tuple[Image.Image, int]], indices: Iterable[int], size: int
) -> torch.Tensor:
    """(N, 3, size, size) in [-1, 1]: the centre crops of ``images[i]`` (image, label pairs,
    e.g. a ``PreparedImages``) for i in ``indices``."""
    return torch.stack([to_tensor(center_crop(images[int(i)][0], size)) for i in indices])
