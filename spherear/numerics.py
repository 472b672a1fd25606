"""What the numbers of a resumable artefact depend on besides its inputs: the device, the CPU
instruction set and the intra-op thread count (a matmul split over 2 threads rounds
differently from one on 1 thread).

Checkpoints, latent caches and sample folders record ``describe(device)``; continuing one
calls ``adopt``, which takes the recorded thread count (telling the user) and refuses a
different device or instruction set in one line, so an interrupted artefact is finished
exactly as it would have been without the interruption.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from spherear.errors import SpherearError


def describe(device: torch.device | str) -> dict:
    device = torch.device(device)
    cuda = device.type == "cuda"
    return {
        "device": f"cuda ({torch.cuda.get_device_name(device)})" if cuda else device.type,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }


def adopt(saved: dict, device: torch.device | str, where: str, say: Callable[[str], None]) -> None:
    """Make this process compute like the one that wrote ``saved`` (a ``describe`` record):
    the thread count is set to the recorded one; another device or CPU instruction set
    stops here, in one line."""
    now = describe(device)
    differ = [k for k in ("device", "cpu_capability") if k in saved and saved[k] != now[k]]
    if differ:
        listed = "; ".join(f"{k} {saved[k]} there, {now[k]} here" for k in differ)
        raise SpherearError(
            f"{where} was computed with other numerics ({listed}), so continuing it here would "
            "not give the bytes of an uninterrupted run; continue it on the same kind of "
            "machine, or start another output folder"
        )
    threads = saved.get("threads")
    if isinstance(threads, int) and threads != now["threads"]:
        torch.set_num_threads(threads)
        say(
            f"{where} was computed with {threads} intra-op thread(s); continuing with "
            f"{threads} instead of {now['threads']}, so the results match an uninterrupted run"
        )
