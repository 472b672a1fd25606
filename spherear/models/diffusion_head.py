"""The per-token diffusion head: a small MLP that predicts the flow velocity of one token.

Its input is the noisy token x_t, the time t and the trunk's condition z for that position.
Residual blocks are modulated adaLN-style; consecutive blocks share one (scale, shift, gate)
projection per group, which is how the released models keep the head small.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0):
    """Sinusoidal embedding of t in [0, 1], scaled by 1000 first; cos half then sin half."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = (t.float() * 1000)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


def modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class ResBlock(nn.Module):
    """LayerNorm -> modulate -> SwiGLU (hidden 1.5x) -> gated residual."""

    def __init__(self, width: int):
        super().__init__()
        hidden = int(1.5 * width)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.w1 = nn.Linear(width, 2 * hidden)
        self.w2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor, scale, shift, gate) -> torch.Tensor:
        gate_in, up = self.w1(modulate(self.norm(x), scale, shift)).chunk(2, dim=-1)
        return x + gate * self.w2(F.silu(gate_in) * up)


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada_ln_modulation = nn.Linear(width, 2 * width)
        self.linear = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
        scale, shift = modulation.chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), scale, shift))


class DiffusionHead(nn.Module):
    def __init__(self, latent_dim: int, cond_dim: int, width: int, depth: int, groups: int):
        super().__init__()
        if depth % groups:
            raise ValueError(f"head depth {depth} must be a multiple of head groups {groups}")
        self.blocks_per_group = depth // groups
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(cond_dim, width)
        self.input_proj = nn.Linear(latent_dim, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.ada_ln_blocks = nn.ModuleList(nn.Linear(width, 3 * width) for _ in range(groups))
        self.final_layer = FinalLayer(width, latent_dim)

    def zero_init_modulation(self) -> None:
        """Start every block as the identity and the output at zero."""
        for layer in [*self.ada_ln_blocks, self.final_layer.ada_ln_modulation,
                      self.final_layer.linear]:  # fmt: skip
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Velocity (N, latent_dim) of noisy tokens x (N, latent_dim) at times t (N,) given
        the trunk's conditions z (N, cond_dim)."""
        return self.run(x, self.time_embed(t), self.cond_embed(z))

    def run(self, x: torch.Tensor, t_emb: torch.Tensor, z_emb: torch.Tensor) -> torch.Tensor:
        """``forward`` from the embedded time (N or 1, width) and condition (N, width)."""
        return self.run_modulated(x, self.modulations(t_emb, z_emb))

    def modulations(self, t_emb: torch.Tensor, z_emb: torch.Tensor) -> list[torch.Tensor]:
        """The adaLN outputs for embedded times and conditions (broadcast together): one
        (..., 3 width) per group of blocks, then the final layer's (..., 2 width). They do not
        depend on x, so a sampler computes them for all of a token's steps in one product
        instead of re-reading these weights at every step."""
        y = F.silu(t_emb + z_emb)
        return [ada_ln(y) for ada_ln in self.ada_ln_blocks] + [
            self.final_layer.ada_ln_modulation(y)
        ]

    def run_modulated(self, x: torch.Tensor, modulations: list[torch.Tensor]) -> torch.Tensor:
        """The velocity of rows x (N, latent_dim) given their ``modulations`` (N rows each)."""
        h = self.input_proj(x.to(self.input_proj.weight.dtype))
        *groups, final = modulations
        for g, modulation in enumerate(groups):
            scale, shift, gate = modulation.chunk(3, dim=-1)
            for block in self.res_blocks[
                g * self.blocks_per_group : (g + 1) * self.blocks_per_group
            ]:
                h = block(h, scale, shift, gate)
        return self.final_layer(h, final)
