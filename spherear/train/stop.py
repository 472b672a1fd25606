"""Stopping a run on a signal: Ctrl-C, SIGTERM (a cluster's pre-emption) or SIGUSR1 (a
scheduler's warning) stop the run at the next step boundary, after a checkpoint, with one
line saying how to resume it."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from pathlib import Path

import torch

from spherear.errors import Stopped


class StopRequests:
    """Ctrl-C, SIGTERM (a cluster's pre-emption) and SIGUSR1 (a scheduler's warning) ask the
    run to stop at the next step boundary, after a checkpoint; a second Ctrl-C stops at
    once. Every process must agree on the step, so the request is reduced across them."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.signum = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name}: saving a checkpoint at the end of this step, "
            "then stopping (Ctrl-C again stops at once)",
            file=sys.stderr,
        )

    def requested(self, accelerator) -> int:
        """The signal to stop on (0: none), the same on every process."""
        if accelerator.num_processes == 1:
            return self.signum
        flag = torch.tensor([self.signum], device=accelerator.device)
        return int(accelerator.reduce(flag, "max").item())


def ignore_stop_signals(worker_id: int) -> None:
    """A DataLoader worker leaves the signals to the main process, which stops cleanly."""
    for signum in StopRequests.SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def stopped(signum: int, step: int, checkpoint: Path) -> Stopped:
    how = (
        "rerun the same launch command"
        if "LOCAL_RANK" in os.environ
        else f"rerun `spherear {shlex.join(sys.argv[1:])}`"
    )
    return Stopped(
        f"{signal.Signals(signum).name} at step {step}: the run is saved in {checkpoint}; "
        f"{how} to resume it exactly",
        signum,
    )
