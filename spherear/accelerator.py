"""The one place spherear starts Accelerate, for every command that computes: training,
caching latents, sampling and evaluation.

CUDA when there is one, else the CPU with ``cpu=True``: without it, Accelerate ignores the
processes of ``torchrun`` on a machine without CUDA. ``mixed_precision = "bf16"`` autocasts
to bf16 on either: CPUs with avx512_bf16 or AMX run bf16 matrix products natively, and the
same fp32 islands (power-spherical maths, losses, the posterior, radial normalisation) hold
on both, so the CPU exercises the paths a GPU run takes.
"""

from __future__ import annotations

from typing import Literal


def make_accelerator(
    mixed_precision: Literal["no", "bf16"] = "no",
    log_with: str | None = None,
    project_dir: str | None = None,
):
    """An ``accelerate.Accelerator`` (DDP across processes; ``train.fsdp`` shards with
    ``spherear.train.sharding`` instead); ``log_with`` names a tracker (TensorBoard, wandb)
    that writes under ``project_dir``."""
    import torch
    from accelerate import Accelerator

    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=mixed_precision,
        log_with=log_with,
        project_dir=project_dir,
    )
