"""The AR model's tokens and the VAE's latents: how one becomes the other.

An S-VAE's latents lie on the sphere of radius sqrt(latent_dim), and they are the tokens.
Gaussian latents (the paper's baseline) are not on any sphere; ``ar.token_space`` picks
what the AR model sees of them:

- ``sphere``: each latent projected onto the sphere of radius sqrt(latent_dim), "post-hoc
  normalisation";
- ``raw``: each latent multiplied by ``ar.latent_scale`` (1 / the latents' standard
  deviation, measured on the data), as MAR feeds its KL-16 latents.

Either way the decoder gets tokens divided by the scale again: raw tokens go back to the
latents they came from, sphere tokens to the sphere of radius sqrt(latent_dim) / scale,
about the typical norm of the latents the decoder was trained on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from spherear.config import ARConfig, SampleConfig, VAEConfig


def to_sphere(x: torch.Tensor) -> torch.Tensor:
    """Radial normalisation onto the sphere of radius sqrt(dim)."""
    return F.normalize(x.float(), dim=-1) * math.sqrt(x.shape[-1])


def latents_to_tokens(latents: torch.Tensor, vae: VAEConfig, ar: ARConfig) -> torch.Tensor:
    """Posterior samples (..., latent_dim) -> the tokens the AR model trains on."""
    if vae.posterior == "power_spherical":
        return latents  # on the sphere already
    if ar.latent_scale is None:
        raise ValueError("Gaussian latents need ar.latent_scale (train-ar measures it)")
    return to_sphere(latents) if ar.token_space == "sphere" else latents * ar.latent_scale


def tokens_to_latents(tokens: torch.Tensor, ar: ARConfig) -> torch.Tensor:
    """The AR model's tokens -> what the VAE decoder takes."""
    return tokens if ar.latent_scale in (None, 1.0) else tokens / ar.latent_scale


def normalisation(sample: SampleConfig, ar: ARConfig) -> str:
    """``sample.normalise`` with "auto" resolved: the paper's after_cfg on the sphere, none
    for raw Gaussian latents (MAR)."""
    if sample.normalise != "auto":
        return sample.normalise
    return "none" if ar.token_space == "raw" else "after_cfg"
