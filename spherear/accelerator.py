"""The one place spherear starts Accelerate, for every command that computes: training,
caching latents, sampling and evaluation.

CUDA when there is one, else the CPU with ``cpu=True``: without it, Accelerate ignores the
processes of ``torchrun`` on a machine without CUDA. Mixed precision is for CUDA only; on a
CPU every command computes in fp32.
"""

from __future__ import annotations

from typing import Literal


def make_accelerator(
    mixed_precision: Literal["no", "bf16"] = "no",
    fsdp: bool = False,
    log_with: str | None = None,
    project_dir: str | None = None,
):
    """An ``accelerate.Accelerator``; ``fsdp`` shards the models (else DDP), ``log_with``
    names a tracker (TensorBoard, wandb) that writes under ``project_dir``."""
    import torch
    from accelerate import Accelerator, FullyShardedDataParallelPlugin

    cuda = torch.cuda.is_available()
    return Accelerator(
        cpu=not cuda,
        mixed_precision=mixed_precision if cuda else "no",
        log_with=log_with,
        project_dir=project_dir,
        fsdp_plugin=FullyShardedDataParallelPlugin() if fsdp else None,
    )
