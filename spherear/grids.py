"""Image grids as PNG files: the sample and reconstruction grids of training, the grid of a
sample folder, the picture on a model card."""

from __future__ import annotations

from pathlib import Path

import torch

from spherear.files import atomic_write


def save_grid(images: torch.Tensor, path: Path, nrow: int, row_labels: list[str] = ()) -> None:
    """RGB images (N, 3, H, W) in [-1, 1] -> one PNG grid of ``nrow`` images a row with
    2-pixel black gutters: torchvision's layout and rounding (for N >= 2), without importing
    torchvision, which costs 4 s a command on a CPU; ``row_labels`` (class names) are written
    left of their rows. The file appears only when whole."""
    from PIL import Image

    pad = 2
    pixels = (((images.detach().float().cpu() + 1) / 2).clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    n, c, h, w = pixels.shape
    cols = min(nrow, n)
    rows = -(-n // cols)
    grid = torch.zeros(rows * (h + pad) + pad, cols * (w + pad) + pad, c, dtype=torch.uint8)
    for i, image in enumerate(pixels):
        y, x = pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)
        grid[y : y + h, x : x + w] = image.permute(1, 2, 0)
    picture = Image.fromarray(grid.numpy())
    if row_labels:
        picture = _label_rows(picture, row_labels, h + pad, pad)
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"), "grid")


def _label_rows(grid, labels: list[str], row_height: int, pad: int):
    """``grid`` with a margin on the left naming each row, vertically centred on it."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    labels = [label if len(label) <= 24 else label[:22] + ".." for label in labels]
    draw = ImageDraw.Draw(grid)
    boxes = [draw.textbbox((0, 0), label, font=font) for label in labels]
    margin = max(box[2] for box in boxes) + 3 * pad
    out = Image.new("RGB", (grid.width + margin, grid.height))
    out.paste(grid, (margin, 0))
    draw = ImageDraw.Draw(out)
    for r, (label, box) in enumerate(zip(labels, boxes, strict=True)):
        centre = pad + r * row_height + (row_height - pad) / 2
        draw.text((pad, centre - (box[1] + box[3]) / 2), label, fill=(255, 255, 255), font=font)
    return out
