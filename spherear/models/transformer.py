"""The transformer block shared by the S-VAE and the AR model, and its 2D rotary embedding.

Pre-RMSNorm attention (one bias-free qkv projection) and a bias-free SwiGLU MLP. Positions
enter only through 2D RoPE, by the released models' rule: a grid token sits at its patch
centre shifted by one, x = column + 1.5 and y = row + 1.5; prefix tokens (VAE registers, AR
class tokens) sit at (0, 0), unrotated. The first half of each head's pairs turns with x (the
column), the second half with y.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from spherear.models.kv_cache import KVCache


def rope_table_2d(
    grid_size: int, head_dim: int, num_prefix: int, base: float = 10000.0
) -> torch.Tensor:
    """(num_prefix + grid_size**2, head_dim // 2, 2) table of (cos, sin), raster order.

    Pair p < head_dim / 4 of a grid token turns by x * f_p and pair head_dim / 4 + p by
    y * f_p, with f_j = base^(-2j / (head_dim / 2)). Computed in float32 as the released
    models did, so that their outputs are reproduced to the bit. Exports record this rule as
    ``spherear.checkpoint_header.ROPE_CONVENTION``.
    """
    axis_dim = head_dim // 2
    freqs = 1.0 / base ** (torch.arange(0, axis_dim, 2, dtype=torch.float32) / axis_dim)
    centres = torch.arange(grid_size, dtype=torch.float32) + 1.5
    y, x = torch.meshgrid(centres, centres, indexing="ij")  # raster order: row by row
    grid = torch.cat([torch.outer(x.flatten(), freqs), torch.outer(y.flatten(), freqs)], dim=1)
    angles = torch.cat([torch.zeros(num_prefix, axis_dim), grid])
    return torch.stack([angles.cos(), angles.sin()], dim=-1)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of ``x`` (B, T, H, D) by ``table`` (T, D // 2, 2)."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    cos = table[None, :, None, :, 0]
    sin = table[None, :, None, :, 1]
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1)
    return out.flatten(-2).type_as(x)


def swiglu_hidden(dim: int) -> int:
    """2/3 of a 4x MLP, rounded up to a multiple of 256 (512 -> 1536, 768 -> 2048)."""
    hidden = int(2 * 4 * dim / 3)
    return 256 * ((hidden + 255) // 256)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        causal: bool,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.wqkv(x).view(B, T, 3, self.num_heads, self.head_dim).unbind(2)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        mask = None
        if cache is not None:
            start = cache.length
            k, v = cache.update(layer, k, v)
            if causal and start > 0 and T > 1:
                # a chunk appended after a cached prefix sees the prefix and its own past
                mask = torch.arange(start + T, device=x.device)[None] <= (
                    start + torch.arange(T, device=x.device)[:, None]
                )
            causal = causal and start == 0 and T > 1
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.wo(out.transpose(1, 2).reshape(B, T, C))


class FeedForward(nn.Module):
    """SwiGLU; ``w1`` holds the gate and the up projection stacked."""

    def __init__(self, dim: int):
        super().__init__()
        hidden = swiglu_hidden(dim)
        self.w1 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w1(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.attention = Attention(dim, num_heads)
        self.feed_forward = FeedForward(dim)
        self.attention_norm = RMSNorm(dim)
        self.ffn_norm = RMSNorm(dim)

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        causal: bool = False,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), rope, causal, cache, layer)
        return x + self.feed_forward(self.ffn_norm(x))
