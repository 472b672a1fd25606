"""FSDP with PyTorch's own ``fully_shard`` (FSDP2): the same code on GPUs and, over gloo, on
a CPU.

Accelerate shards with its FSDP plugin only on accelerators: given CPU processes it trains
with DDP without a word, so ``train.fsdp`` could never run before it met a GPU. spherear
shards the AR model itself instead: each transformer block and the head are a unit (their
parameters are gathered for their forward and backward, then freed), and the rest of the
model is the root unit. Parameters become DTensors sharded over the processes; the
optimiser, built afterwards, keeps only its shard of AdamW's state. Checkpoints gather whole
tensors (``torch.distributed.checkpoint.state_dict``), so a sharded run writes the same
files as a DDP run and its export loads in one process.
"""

from __future__ import annotations

import torch


def shard(model: torch.nn.Module, units: list[torch.nn.Module], device: torch.device,
          num_processes: int) -> torch.nn.Module:  # fmt: skip
    """``model`` sharded over ``num_processes`` in ``units`` plus the root; a single process
    has nothing to shard and gets it back as it was."""
    if num_processes == 1:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (num_processes,))
    for unit in units:
        fully_shard(unit, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a shard (every process must call it, in the same order); a
    plain tensor as it is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def whole_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with whole tensors on the CPU; every process must call it."""
    return {k: whole(v).detach().cpu() for k, v in model.state_dict().items()}
