"""Key/value cache for incremental causal decoding."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer for up to ``max_len`` positions; ``length`` are filled.

    All layers advance together: one forward pass appends the same positions to each layer
    and then calls ``advance``. Storage is allocated on first use, in the dtype the
    projections produce (bf16 under autocast or with bf16 weights, fp32 otherwise).
    """

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.length = 0
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``/``v`` (B, H, T, D) after the filled part; return all keys/values so far."""
        if layer not in self.keys:
            B, H, _, D = k.shape
            self.keys[layer] = k.new_zeros(B, H, self.max_len, D)
            self.values[layer] = v.new_zeros(B, H, self.max_len, D)
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, asked for {end}")
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n
