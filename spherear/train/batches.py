"""Which examples each optimiser step sees, and every random draw made for them.

Determinism is built in rather than restored: the images of global step s, and every random
draw made for them (crop, posterior sample, class dropout, flow time and noise), are
functions of (seed, s, position in the global batch). So a run gives the same losses on 1
or 8 processes, and a resumed run continues the exact sample stream without replaying any
random number generator.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from spherear.config import TrainConfig
from spherear.train import TrainingError


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


class StepBatches(torch.utils.data.Dataset):
    """Item k is the micro-batch of process ``rank`` for optimiser step
    ``first + k // accumulation``; subclasses make one training example (``example``) from
    its dataset index, its seed and the (fractional) epoch, and items are those examples
    stacked (or they make the whole micro-batch at once, overriding ``make_batch``)."""

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
        examples = [self.example(i, s, epoch) for i, s in zip(indices, seeds, strict=True)]
        return torch.utils.data.default_collate(examples)

    def example(self, index: int, seed: int, epoch: float):
        raise NotImplementedError
