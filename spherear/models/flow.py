"""Rectified flow for one token: the training loss and the samplers of the head.

Time runs from noise (t = 0) to data (t = 1): x_t = (1 - t) noise + t x, and the head
predicts the velocity v = x - noise. The samplers call ``velocity(x, t)`` with one time
``t`` (a Python float) for all rows, so a caller can reuse whatever depends on t alone.

- ``sde``: the paper's Euler-Maruyama sampler, ``steps`` + 1 velocity evaluations;
- ``ode``: plain Euler, ``steps`` evaluations;
- ``heun``: Heun's second-order method, 2 ``steps`` evaluations, accurate with few steps.

``token_steps`` spreads a budget of steps over the tokens of an image: the paper uses the
same number for every token; step annealing (DiSA, arXiv 2505.20297) gives the first tokens,
which fix the layout, many steps and the last ones, whose conditional distributions are
narrow, few.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Velocity = Callable[[torch.Tensor, float], torch.Tensor]
SAMPLERS = ("sde", "ode", "heun")
SDE_T_END = 0.96  # the SDE's noisy steps stop here; one Euler step covers the rest


def flow_matching_loss(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    target: torch.Tensor,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE between predicted and true velocity, t ~ sigmoid(N(0, 1)) per row, in fp32.
    ``t`` and ``noise`` may be given, drawn elsewhere for reproducibility."""
    if t is None:
        t = torch.sigmoid(torch.randn(target.shape[0], device=target.device))
    if noise is None:
        noise = torch.randn_like(target)
    x_t = (1 - t[:, None]) * noise + t[:, None] * target
    pred = velocity(x_t, t)
    return (pred.float() - (target - noise).float()).square().mean()


def evaluations(sampler: str, steps: int) -> int:
    """Velocity evaluations of one run of ``sampler`` with ``steps`` steps."""
    return {"sde": steps + 1, "ode": steps, "heun": 2 * steps}[sampler]


def token_steps(steps: int, steps_last: int, num_tokens: int) -> list[int]:
    """Steps for each token: ``steps`` for all, or (``steps_last`` > 0) falling linearly
    from ``steps`` at the first token to ``steps_last`` at the last, rounded."""
    if steps_last <= 0 or num_tokens == 1:
        return [steps] * num_tokens
    span = steps_last - steps
    return [round(steps + span * i / (num_tokens - 1)) for i in range(num_tokens)]


def time_grid(steps: int, t_end: float = 1.0) -> list[float]:
    """The times 0, dt, ..., (steps - 1) dt, t_end with dt = t_end / steps, at which the
    samplers evaluate the velocity (the last one written as t_end, not steps * dt)."""
    dt = t_end / steps
    return [i * dt for i in range(steps)] + [t_end]


def sampler_times(sampler: str, steps: int) -> list[float]:
    """Every time at which ``run_sampler(sampler, ..., steps)`` evaluates the velocity."""
    if sampler == "sde":
        return time_grid(steps, SDE_T_END)
    if sampler == "ode":
        return time_grid(steps)[:-1]
    if sampler == "heun":
        return time_grid(steps)
    raise ValueError(f"unknown sampler '{sampler}'; use one of {', '.join(SAMPLERS)}")


def sample_sde(
    velocity: Velocity,
    noise: torch.Tensor,
    steps: int = 100,
    t_end: float = SDE_T_END,
    generator: torch.Generator | None = None,
    eps: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Euler-Maruyama over [0, t_end] with diffusion (1 - t), then one Euler step to t = 1.

    With x_t = (1 - t) noise + t x the score is (t v - x) / (1 - t); the SDE whose marginals
    match the flow adds (1 - t) * score to the drift and sqrt(2 (1 - t) dt) noise per step.
    The last Euler step avoids dividing by 1 - t near t = 1. ``eps`` (steps, *noise.shape)
    are the steps' standard normals when drawn elsewhere, else they come from ``generator``.
    ``temperature`` scales the starting noise and every step's noise.
    """
    x = noise.float() * temperature
    dt = t_end / steps
    for i, t in enumerate(time_grid(steps, t_end)[:-1]):
        v = velocity(x, t).float()
        score = (t * v - x) / (1 - t)
        drift = v + (1 - t) * score
        e = torch.randn(x.shape, device=x.device, generator=generator) if eps is None else eps[i]
        x = x + drift * dt + math.sqrt(2 * (1 - t) * dt) * temperature * e
    return x + velocity(x, t_end).float() * (1 - t_end)


def sample_ode(velocity: Velocity, noise: torch.Tensor, steps: int = 100) -> torch.Tensor:
    """Plain Euler integration of dx/dt = v from t = 0 to 1."""
    x = noise.float()
    dt = 1.0 / steps
    for t in time_grid(steps)[:-1]:
        x = x + velocity(x, t).float() * dt
    return x


def sample_heun(velocity: Velocity, noise: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """Heun's method for dx/dt = v from t = 0 to 1: an Euler step, then the average of the
    velocities at both of its ends (the velocity is finite at t = 1, so the last step too)."""
    x = noise.float()
    dt = 1.0 / steps
    times = time_grid(steps)
    for t, t_next in zip(times[:-1], times[1:], strict=True):
        v = velocity(x, t).float()
        guess = x + v * dt
        x = x + (v + velocity(guess, t_next).float()) * (dt / 2)
    return x


def run_sampler(
    sampler: str,
    velocity: Velocity,
    noise: torch.Tensor,
    steps: int,
    generator: torch.Generator | None = None,
    eps: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """One token's flow from ``noise`` to data with ``sampler`` (one of SAMPLERS); ``eps``
    or ``generator`` feed the SDE's noise. ``temperature`` scales all the noise: the
    starting point, and for the SDE each step's."""
    if sampler == "sde":
        return sample_sde(velocity, noise, steps, generator=generator, eps=eps,
                          temperature=temperature)  # fmt: skip
    if sampler == "ode":
        return sample_ode(velocity, noise * temperature, steps)
    if sampler == "heun":
        return sample_heun(velocity, noise * temperature, steps)
    raise ValueError(f"unknown sampler '{sampler}'; use one of {', '.join(SAMPLERS)}")
