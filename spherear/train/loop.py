"""What train-vae and train-ar share: batch arithmetic, data order, per-sample seeds, EMA,
optimiser groups, the learning-rate schedule, the metrics log, stopping on signals, guards
(checkpoints are ``spherear.train.state``).

Determinism is built in rather than restored: the images of global step s, and every random
draw made for them (crop, posterior sample, class dropout, flow time and noise), are
functions of (seed, s, position in the global batch). So a run gives the same losses on 1
or 8 processes, and a resumed run continues the exact sample stream without replaying any
random number generator.
"""

from __future__ import annotations

import functools
import math
import os
import shlex
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from spherear.config import TrainConfig
from spherear.errors import SpherearError, Stopped
from spherear.files import JsonLines

if TYPE_CHECKING:
    from spherear.train.state import Checkpoints


class TrainingError(SpherearError):
    """A run that cannot start or continue; the message says why and what to change."""


@dataclass(frozen=True)
class BatchPlan:
    """``global_batch_size`` = micro batch x processes x accumulation steps, exactly."""

    global_batch: int
    micro_batch: int
    world: int
    accumulation: int

    @classmethod
    def make(cls, cfg: TrainConfig, world: int) -> BatchPlan:
        per_step = cfg.micro_batch_size * world
        accumulation, rest = divmod(cfg.global_batch_size, per_step)
        if rest or accumulation == 0:
            raise TrainingError(
                f"train.global_batch_size {cfg.global_batch_size} is not a multiple of "
                f"train.micro_batch_size {cfg.micro_batch_size} x {world} processes; "
                "change either so that it divides"
            )
        return cls(cfg.global_batch_size, cfg.micro_batch_size, world, accumulation)

    def positions(self, rank: int, micro: int) -> range:
        """Positions in the global batch that process ``rank`` handles at micro-step ``micro``."""
        first = (rank * self.accumulation + micro) * self.micro_batch
        return range(first, first + self.micro_batch)


def steps_per_epoch(num_items: int, global_batch: int) -> int:
    if num_items < global_batch:
        raise TrainingError(
            f"the data holds {num_items} items, fewer than train.global_batch_size "
            f"{global_batch}; lower the batch size or prepare more data"
        )
    return num_items // global_batch  # the incomplete last batch of an epoch is dropped


def total_steps(cfg: TrainConfig, per_epoch: int) -> int:
    return cfg.max_steps or cfg.epochs * per_epoch


def item_seed(seed: int, step: int, position: int) -> int:
    """A seed for one item of one step, the same on any number of processes."""
    return int(np.random.SeedSequence([seed, step, position]).generate_state(1)[0])


@functools.lru_cache(maxsize=2)  # every micro-batch of an epoch shares one permutation
def _epoch_order(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(num_items, generator=torch.Generator().manual_seed(seed + epoch))


def global_batch_items(num_items: int, plan: BatchPlan, seed: int, step: int, per_epoch: int):
    """Dataset indices of global step ``step``: epoch-wise random order, no repeats."""
    epoch, offset = divmod(step, per_epoch)
    order = _epoch_order(num_items, seed, epoch)
    start = offset * plan.global_batch
    return order[start : start + plan.global_batch].tolist(), epoch + offset / per_epoch


class EMA:
    """fp32 exponential moving average of a model's parameters."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {
            k: p.detach().float().clone() for k, p in model.named_parameters() if p.requires_grad
        }

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, p in model.named_parameters():
            if k in self.shadow:
                self.shadow[k].lerp_(p.detach().float(), 1 - self.decay)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)

    def full_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The model's state dict with the averaged parameters in place of the raw ones."""
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for k, v in self.shadow.items():
            state[k] = v.to(state[k].dtype)
        return state


def param_groups(model: torch.nn.Module, weight_decay: float, no_decay_modules=()):
    """Decay matrices; never 1-D parameters (norms, biases) nor the named modules."""
    decay, keep = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or any(name.startswith(m + ".") for m in no_decay_modules)
        (keep if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def adamw(
    model: torch.nn.Module, cfg: TrainConfig, no_decay_modules=(), fused: bool = True
) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; ``fused`` runs one kernel over all tensors, which makes
    the tiny model's optimiser step 3x faster on a CPU."""
    groups = param_groups(model, cfg.weight_decay, no_decay_modules)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused)


def lr_factor(step: int, cfg: TrainConfig, total: int) -> float:
    """Linear warmup to ``lr``, then constant or cosine down to ``min_lr``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    floor = cfg.min_lr / cfg.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class MetricsLog:
    """One JSON line per logged step in ``run/metrics.jsonl`` (main process only); a kill
    during an append tears only the last line, which is dropped (``spherear.files``)."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.file = JsonLines(run_dir / "metrics.jsonl", "metrics")
        self.enabled = enabled
        self.lines = 0

    def keep(self, lines: int) -> None:
        """Back to the first ``lines`` records, those a checkpoint covers: a killed run may
        have logged steps past it."""
        if self.enabled:
            self.file.keep(lines)
        self.lines = lines

    def write(self, record: dict) -> None:
        if self.enabled:
            self.file.append(record)
        self.lines += 1

    def sync(self) -> None:
        if self.enabled:
            self.file.sync()


def read_metrics(run_dir: str | Path) -> list[dict]:
    return JsonLines(Path(run_dir) / "metrics.jsonl").read()


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


def check_finite(loss: float, step: int, checkpoints: Checkpoints, cfg: TrainConfig) -> None:
    if math.isfinite(loss):
        return
    last = checkpoints.latest()
    kept = f"the last good checkpoint, {last}, is intact" if last else "no checkpoint was saved"
    raise TrainingError(
        f"loss is {loss} at step {step}: training stopped and {kept}; lower train.lr "
        f"(now {cfg.lr}) or check the data, then rerun to resume"
    )


def oom_message(error: Exception, plan: BatchPlan, cfg: TrainConfig) -> TrainingError:
    return TrainingError(
        f"out of GPU memory at train.micro_batch_size {plan.micro_batch} "
        f"({' '.join(str(error).split())[:120]}); lower train.micro_batch_size (accumulation "
        f"keeps the global batch of {plan.global_batch}) or set train.grad_checkpointing = true"
    )


def weights_checksum(model: torch.nn.Module) -> float:
    """A float64 sum over all parameters: equal on every process of a healthy DDP run."""
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def set_lr(optimizers, cfg: TrainConfig, step: int, total: int) -> float:
    """The learning rate is a function of the step and the recipe alone, so a resumed run
    follows the schedule exactly, and a lower ``train.lr`` is a way out of a diverged run."""
    lr = cfg.lr * lr_factor(step, cfg, total)
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lr
    return lr


class StepBatches(torch.utils.data.Dataset):
    """Item k is the micro-batch of process ``rank`` for optimiser step
    ``first + k // accumulation``; subclasses make one sample from its dataset index, its
    seed and the (fractional) epoch, and items are those samples stacked (or they make the
    whole micro-batch at once, overriding ``make_batch``)."""

    def __init__(self, num_items: int, plan: BatchPlan, rank: int, first: int, last: int,
                 seed: int):  # fmt: skip
        self.num_items, self.plan, self.rank, self.seed = num_items, plan, rank, seed
        self.first, self.last = first, last
        self.per_epoch = steps_per_epoch(num_items, plan.global_batch)

    def __len__(self) -> int:
        return (self.last - self.first) * self.plan.accumulation

    def __getitem__(self, k: int):
        step, micro = divmod(k, self.plan.accumulation)
        step += self.first
        items, epoch = global_batch_items(self.num_items, self.plan, self.seed, step,
                                          self.per_epoch)  # fmt: skip
        positions = self.plan.positions(self.rank, micro)
        seeds = [item_seed(self.seed, step, p) for p in positions]
        return self.make_batch([int(items[p]) for p in positions], seeds, epoch)

    def make_batch(self, indices: list[int], seeds: list[int], epoch: float):
        samples = [self.sample(i, s, epoch) for i, s in zip(indices, seeds, strict=True)]
        return torch.utils.data.default_collate(samples)

    def sample(self, index: int, seed: int, epoch: float):
        raise NotImplementedError
