"""SphereAR's sampling loop written plainly from the paper, nothing hoisted or fused.

Every SDE step calls the whole head on the repeated class and null-class rows with the time
repeated per row, exactly as the method is stated (spherear 0.1's loop). It is slow and kept
for one purpose: the fast loop (``SphereAR.sample`` with ``TokenSampler``) is tested against
it for equal velocities and tokens, and ``benchmarks/bench_sample.py --compare`` times the two
side by side. Paper settings only: the Euler-Maruyama sampler, the same steps for every token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from spherear.config import SampleConfig


@torch.no_grad()
def reference_sample(
    ar,
    labels: torch.Tensor,
    settings: SampleConfig,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """Tokens (B, N, latent_dim) for ``labels`` (B,), drawn as ``ar.sample`` draws them."""
    paper = settings.normalise in ("auto", "after_cfg")
    if settings.sampler != "sde" or settings.steps_last or settings.temperature != 1.0 or not paper:
        raise ValueError(
            "the reference loop covers the paper's sampler: sde, constant steps, temperature 1, "
            "normalisation after CFG"
        )
    B, N, dim = len(labels), ar.num_tokens, ar.latent_dim
    guided = settings.cfg != 1.0
    rows = torch.cat([labels, torch.full_like(labels, ar.null_class)]) if guided else labels
    out = torch.empty(B, N, dim, device=labels.device)

    def choose(i: int, z: torch.Tensor) -> torch.Tensor:
        if settings.cfg_schedule == "linear":
            scale = 1 + (settings.cfg - 1) * i / N
        else:
            scale = settings.cfg

        def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
            times = torch.full((len(x),), t, device=x.device)
            if not guided:
                return ar.head(x, times, z).float()
            v_cond, v_uncond = ar.head(x.repeat(2, 1), times.repeat(2), z).float().chunk(2)
            return v_uncond + scale * (v_cond - v_uncond)

        steps = settings.steps
        if generator is None or isinstance(generator, torch.Generator):
            x = torch.randn((B, dim), device=labels.device, generator=generator)
            eps = [None] * steps
        else:  # one generator per row: the start noise, then one normal per step
            draws = torch.stack(
                [torch.randn((1 + steps, dim), device=labels.device, generator=g)
                 for g in generator], 1
            )  # fmt: skip
            x, eps = draws[0], draws[1:]
        single = generator if isinstance(generator, torch.Generator) else None
        device = labels.device
        dt = 0.96 / steps
        for k in range(steps):
            t = k * dt
            v = velocity(x, t)
            drift = v + (1 - t) * (t * v - x) / (1 - t)
            e = torch.randn(x.shape, device=device, generator=single) if eps[k] is None else eps[k]
            x = x + drift * dt + math.sqrt(2 * (1 - t) * dt) * e
        x = x + velocity(x, 0.96) * (1 - 0.96)
        out[:, i] = F.normalize(x, dim=-1) * math.sqrt(dim)
        return out[:, i].repeat(2, 1) if guided else out[:, i]

    ar.decode_loop(rows, choose)
    return out
