"""The precision a command computes in: fp32, or bf16 with fp32 islands.

Training and caching latents autocast to bf16 on the command's device, CPU or CUDA alike, so
that the fp32 islands the models keep under autocast (power-spherical maths, the S-VAE
posterior, losses) are the same everywhere. Sampling instead holds the AR model's weights in
bf16 (``held_in``) and runs without autocast: autocast would cast every fp32 weight again at
every head call, which on a CPU costs more than the bf16 product saves at small batch, and
the sampling code keeps its own fp32 islands (RMSNorm, RoPE, the guided velocity, the
sampler's steps, radial normalisation), each casting its inputs to the weights' dtype.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch

Precision = Literal["fp32", "bf16"]


def of_recipe(mixed_precision: str) -> Precision:
    """The precision of a recipe's ``train.mixed_precision`` ("no" or "bf16")."""
    return "bf16" if mixed_precision == "bf16" else "fp32"


def autocast(device: torch.device, precision: Precision) -> torch.autocast:
    """bf16 autocast on ``device`` for ``precision`` bf16; a disabled one for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def held_in(model: torch.nn.Module, precision: Precision) -> torch.nn.Module:
    """``model`` itself for fp32; for bf16 a copy whose floating-point parameters are bf16.
    Buffers (the RoPE table) stay fp32: rounding their angles would move every position."""
    if precision == "fp32":
        return model
    held = copy.deepcopy(model)
    for parameter in held.parameters():
        if parameter.is_floating_point():
            parameter.data = parameter.data.to(torch.bfloat16)
    return held
