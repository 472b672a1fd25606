"""What train-vae and train-ar share: batch arithmetic, data order, per-sample seeds, EMA,
optimiser groups, the learning-rate schedule, atomic checkpoints, the metrics log, guards.

Determinism is built in rather than restored: the images of global step s, and every random
draw made for them (crop, posterior sample, class dropout, flow time and noise), are
functions of (seed, s, position in the global batch). So a run gives the same losses on 1
or 8 processes, and a resumed run continues the exact sample stream without replaying any
random number generator.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spherear.config import TrainConfig
from spherear.errors import SpherearError


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


class Counter:
    """The step count, saved with the checkpoint."""

    def __init__(self):
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]


class Checkpoints:
    """``run/checkpoints/step-XXXXXXXX``, each written to a temporary folder first and
    renamed when whole; only the newest ``keep`` are kept."""

    def __init__(self, run_dir: Path, keep: int):
        self.dir = run_dir / "checkpoints"
        self.keep = keep

    def all(self) -> list[Path]:
        return sorted(self.dir.glob("step-*")) if self.dir.is_dir() else []

    def latest(self) -> Path | None:
        done = self.all()
        return done[-1] if done else None

    def save(self, accelerator, step: int) -> Path:
        final = self.dir / f"step-{step:08d}"
        tmp = self.dir / f".tmp-step-{step:08d}"
        if accelerator.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            tmp.rename(final)
            for old in self.all()[: -self.keep]:
                shutil.rmtree(old)
        accelerator.wait_for_everyone()
        return final


class MetricsLog:
    """One JSON line per logged step in ``run/metrics.jsonl`` (main process only)."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """A killed run may have logged steps past its last checkpoint; drop them."""
        if not self.enabled or not self.path.is_file():
            return
        lines = self.path.read_text().splitlines()
        kept = [ln for ln in lines if json.loads(ln)["step"] <= step]
        self.path.write_text("".join(ln + "\n" for ln in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


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


def resume(accelerator, checkpoints: Checkpoints) -> None:
    """Load the newest complete checkpoint, if any."""
    latest = checkpoints.latest()
    if latest is None:
        return
    try:
        accelerator.load_state(str(latest))
    except (RuntimeError, KeyError, FileNotFoundError) as e:
        raise TrainingError(
            f"{latest}: cannot resume from it ({' '.join(str(e).split())[:160]}); it was "
            "written by another version or setup of spherear: use another run.output_dir"
        ) from None
