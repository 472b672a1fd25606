"""Pure torch modules of SphereAR: no I/O, no Accelerate, no hub."""

from __future__ import annotations

import torch

from spherear.config import Recipe, RecipeError
from spherear.models.ar import SphereAR
from spherear.models.registry import resolve_ar
from spherear.models.vae import SphericalVAE


def build_vae(recipe: Recipe) -> SphericalVAE:
    return SphericalVAE(recipe.vae)


def build_ar(recipe: Recipe) -> SphereAR:
    if recipe.ar is None:
        raise ValueError("this recipe has no [ar] section; it describes a VAE only")
    if recipe.ar.num_classes is None:
        raise RecipeError(
            "ar.num_classes is unset: train-ar takes it from the prepared data; set it to "
            "build a model without data"
        )
    return SphereAR(resolve_ar(recipe.ar), recipe.vae.latent_dim, recipe.vae.grid_size)


__all__ = ["SphereAR", "SphericalVAE", "build_ar", "build_vae", "count_parameters"]


def count_parameters(recipe: Recipe) -> dict[str, int]:
    """Parameter counts of each part, from models built on the meta device (no memory)."""
    with torch.device("meta"):
        counts = {"VAE": _numel(build_vae(recipe))}
        if recipe.ar is not None:
            ar = build_ar(recipe)
            head = _numel(ar.head)
            counts |= {
                "AR trunk": _numel(ar) - head,
                "diffusion head": head,
                "AR + head": _numel(ar),
            }
    return counts


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
