"""``vae_loss.initial_code = "pca"``: what it needs of the S-VAE, and the images it is fitted
to (``SphericalVAE.init_patch_code`` does the fitting)."""

from __future__ import annotations

import numpy as np
import torch

from spherear.config import Recipe, RecipeError, VAEConfig
from spherear.data.prepare import PreparedImages
from spherear.data.transforms import center_crops

CODE_IMAGES = 2000  # fit the initial patch code to this many training images


def check_patch_code(cfg: VAEConfig) -> None:
    """What ``vae_loss.initial_code = "pca"`` needs of the architecture, as one-line errors."""
    p = cfg.patch_size
    if not cfg.patch_shortcut:
        raise RecipeError('vae_loss.initial_code = "pca" fits the patch shortcut: set '
                          'vae.patch_shortcut = true (or initial_code = "random")')  # fmt: skip
    if cfg.latent_dim - 1 > 3 * p * p:
        raise RecipeError(
            f'vae_loss.initial_code = "pca": vae.latent_dim {cfg.latent_dim} is more than one '
            f"above the {3 * p * p} numbers of a {p}x{p} RGB patch; lower vae.latent_dim"
        )
    if cfg.latent_dim > cfg.width:
        raise RecipeError(
            f'vae_loss.initial_code = "pca": vae.latent_dim {cfg.latent_dim} exceeds the width '
            f"{cfg.width} (the last of vae.channels); lower vae.latent_dim or widen the VAE"
        )


def code_images(images: PreparedImages, train: np.ndarray, recipe: Recipe) -> torch.Tensor:
    """Centre crops of up to CODE_IMAGES training images (a seeded choice), never held-out
    ones."""
    rng = np.random.default_rng(recipe.run.seed)
    chosen = np.sort(rng.permutation(train)[:CODE_IMAGES])
    return center_crops(images, chosen, recipe.vae.resolution)
