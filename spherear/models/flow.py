"""Rectified flow for one token: the training loss and the two samplers of the head.

Time runs from noise (t = 0) to data (t = 1): x_t = (1 - t) noise + t x, and the head
predicts the velocity v = x - noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def flow_matching_loss(
    velocity: Velocity,
    target: torch.Tensor,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE between predicted and true velocity, t ~ sigmoid(N(0, 1)), in fp32. ``t`` and
    ``noise`` may be given, drawn elsewhere for reproducibility."""
    if t is None:
        t = torch.sigmoid(torch.randn(target.shape[0], device=target.device))
    if noise is None:
        noise = torch.randn_like(target)
    x_t = (1 - t[:, None]) * noise + t[:, None] * target
    pred = velocity(x_t, t)
    return (pred.float() - (target - noise).float()).square().mean()


def _time(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.full((x.shape[0],), t, device=x.device)


def sample_sde(
    velocity: Velocity,
    noise: torch.Tensor,
    steps: int = 100,
    t_end: float = 0.96,
    generator: torch.Generator | None = None,
    eps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Euler-Maruyama over [0, t_end] with diffusion (1 - t), then one Euler step to t = 1.

    With x_t = (1 - t) noise + t x the score is (t v - x) / (1 - t); the SDE whose marginals
    match the flow adds (1 - t) * score to the drift and sqrt(2 (1 - t) dt) noise per step.
    The last Euler step avoids dividing by 1 - t near t = 1. ``eps`` (steps, *noise.shape)
    are the steps' standard normals when drawn elsewhere, else they come from ``generator``.
    """
    x = noise.float()
    dt = t_end / steps
    for i in range(steps):
        t = i * dt
        v = velocity(x, _time(x, t)).float()
        score = (t * v - x) / (1 - t)
        drift = v + (1 - t) * score
        e = torch.randn(x.shape, device=x.device, generator=generator) if eps is None else eps[i]
        x = x + drift * dt + math.sqrt(2 * (1 - t) * dt) * e
    return x + velocity(x, _time(x, t_end)).float() * (1 - t_end)


def sample_ode(velocity: Velocity, noise: torch.Tensor, steps: int = 100) -> torch.Tensor:
    """Plain Euler integration of dx/dt = v from t = 0 to 1."""
    x = noise.float()
    dt = 1.0 / steps
    for i in range(steps):
        x = x + velocity(x, _time(x, i * dt)).float() * dt
    return x
