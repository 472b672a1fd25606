"""The images train-vae never trains on: how many, which (``held_out.json`` in the run
folder, a seeded class-stratified choice, ``spherear.data.splits``), and the report made on
them: PSNR on their centre crops and a grid of the first ``GRID`` (as many classes as there
are, up to ``GRID``) above their reconstructions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from spherear.data.prepare import PreparedImages
from spherear.data.transforms import center_crops
from spherear.files import write_json
from spherear.grids import save_grid
from spherear.train.metrics import MetricsLog

GRID = 8
MAX_HELD_OUT = 100  # a tenth of the data up to this: enough images for a stable PSNR


def held_out_count(num_images: int) -> int:
    return max(GRID, min(MAX_HELD_OUT, num_images // 10))


def write_held_out(run_dir: Path, held: np.ndarray, per_class: dict[str, int]) -> None:
    """Which images are held out (in grid order) and how many of each class."""
    record = {"per_class": per_class, "indices": held.tolist()}
    write_json(run_dir / "held_out.json", record, "train-vae/held-out")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1], after quantising both to uint8 as saved images are."""

    def quantise(x):
        return (x.float() * 127.5 + 128).clamp(0, 255).floor()

    mse = (quantise(a) - quantise(b)).square().mean().item()
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


class HeldOut:
    """The held-out images' centre crops, on the device, and the report made on them."""

    def __init__(self, images: PreparedImages, held: np.ndarray, resolution: int, device):
        self.images = center_crops(images, held, resolution).to(device)

    def report(self, accelerator, vae, run_dir: Path, step: int, log: MetricsLog) -> None:
        """PSNR in the log, and the grid: originals on top, reconstructions below."""
        model = accelerator.unwrap_model(vae)
        model.eval()
        with torch.no_grad(), accelerator.autocast():
            recon = torch.cat([model.decode(model.encode(x).mode()).float().clamp(-1, 1)
                               for x in self.images.split(GRID)])  # fmt: skip
        model.train()
        value = psnr(recon, self.images)
        log.write({"step": step, "held_out_psnr": value})
        accelerator.log({"held_out_psnr": value}, step=step)
        save_grid(
            torch.cat([self.images[:GRID], recon[:GRID]]),
            run_dir / "reconstructions" / f"step-{step:08d}.png",
            nrow=GRID,
        )
