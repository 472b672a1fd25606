"""Pure torch modules of SphereAR: no I/O, no Accelerate, no hub."""

from __future__ import annotations

from spherear.config import Recipe
from spherear.models.ar import SphereAR
from spherear.models.registry import resolve_ar
from spherear.models.vae import SphericalVAE


def build_vae(recipe: Recipe) -> SphericalVAE:
    return SphericalVAE(recipe.vae)


def build_ar(recipe: Recipe) -> SphereAR:
    if recipe.ar is None:
        raise ValueError("this recipe has no [ar] section; it describes a VAE only")
    return SphereAR(resolve_ar(recipe.ar), recipe.vae.latent_dim, recipe.vae.grid_size)


__all__ = ["SphereAR", "SphericalVAE", "build_ar", "build_vae"]
