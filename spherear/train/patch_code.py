"""The images that ``vae_loss.initial_code = "pca"`` fits its code to
(``SphericalVAE.init_patch_code`` does the fitting, ``models.vae.check_patch_code`` says
what it needs)."""

from __future__ import annotations

import numpy as np
import torch

from spherear.config import Recipe
from spherear.data.prepare import PreparedImages
from spherear.data.transforms import center_crops

CODE_IMAGES = 2000  # fit the initial patch code to this many training images


def code_images(images: PreparedImages, train: np.ndarray, recipe: Recipe) -> torch.Tensor:
    """Centre crops of up to CODE_IMAGES training images (a seeded choice), never held-out
    ones."""
    rng = np.random.default_rng(recipe.run.seed)
    chosen = np.sort(rng.permutation(train)[:CODE_IMAGES])
    return center_crops(images, chosen, recipe.vae.resolution)
