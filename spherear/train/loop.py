"""The training loop that train-vae and train-ar share, in the style of Accelerate's
examples: no framework, one class that a trainer drives in four calls::

    loop = Loop(recipe, "train-ar", num_examples)  # checks, Accelerate, the run folder, seed
    ...  # build the models and optimizers, prepare them with loop.accelerator
    first = loop.resume({"model": Part(model, optimizer)}, ema)
    loop.run(batches_from(first), forward, report)  # until the last step
    return loop.export(save, curves)

The loop owns what both trainings do the same way: micro-batches (gradient accumulation
without DDP's all-reduce until the last one), the out-of-memory message, the losses
averaged over the global batch, the stop on a non-finite loss, the learning rate, gradient
clipping and the optimiser steps of each part (then the EMA), the progress bar, the metrics
log, the report (a grid) every ``train.sample_every`` steps and at the last step, the
checkpoint every ``train.checkpoint_every`` steps and at the last, stopping on a signal,
and the export. A trainer adds its model, its loss and its report.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path

import torch

from spherear.config import Recipe, TrainConfig
from spherear.files import note
from spherear.precision import of_recipe
from spherear.train import TrainingError
from spherear.train.batches import BatchPlan, StepBatches, steps_per_epoch, total_steps
from spherear.train.curves import plot_curves
from spherear.train.metrics import MetricsLog
from spherear.train.optim import EMA, set_lr
from spherear.train.session import (
    check_resume,
    fused_optimizers,
    record_run,
    trackers,
    training_accelerator,
)
from spherear.train.sharding import whole
from spherear.train.state import Part, TrainingState
from spherear.train.stop import StopRequests, ignore_stop_signals, stopped

# forward(batch, step) -> (the losses to backpropagate, in order; the values to log by name)
Forward = Callable[[object, int], tuple[list[torch.Tensor], dict[str, torch.Tensor]]]


class Loop:
    """One training run. Made before the models: it checks that the run folder can take the
    run, starts Accelerate, fixes the batch arithmetic, records the run and seeds torch, so
    every process builds the same initial weights."""

    def __init__(self, recipe: Recipe, name: str, num_examples: int, progress: bool = True,
                 allow_changes: bool = False):  # fmt: skip
        self.recipe, self.cfg, self.name, self.progress = recipe, recipe.train, name, progress
        self.run_dir = Path(recipe.run.output_dir)
        changes = check_resume(recipe, self.run_dir, allow_changes)
        self.accelerator = training_accelerator(self.cfg, self.run_dir)
        self.plan = BatchPlan.make(self.cfg, self.accelerator.num_processes)
        self.total = total_steps(self.cfg, steps_per_epoch(num_examples, self.plan.global_batch))
        self.main = self.accelerator.is_main_process
        self.fused = fused_optimizers(self.accelerator, self.cfg)
        self.state = TrainingState(self.run_dir, self.cfg.keep_checkpoints, self.accelerator)
        self.log = MetricsLog(self.run_dir, self.main)
        self.parts: dict[str, Part] = {}
        self.ema: EMA | None = None
        self.step = 0
        if self.main:
            record_run(recipe, self.run_dir, changes, of_recipe(self.accelerator.mixed_precision))
        torch.manual_seed(recipe.run.seed)

    def resume(self, parts: dict[str, Part], ema: EMA | None = None) -> int:
        """Take the prepared ``parts`` (they step in this order; ``ema`` averages the first)
        and load the newest intact checkpoint, if any; returns the first step to train."""
        self.parts, self.ema = parts, ema
        say = note if self.main else lambda message: None
        resumed = self.state.resume(parts, ema, say)
        self.step = resumed.step if resumed else 0
        self.log.keep(resumed.metrics_lines if resumed else 0)
        trackers(self.accelerator, self.recipe)
        return self.step

    def run(self, batches: StepBatches, forward: Forward,
            report: Callable[[int], None] | None = None) -> None:  # fmt: skip
        """Train on ``batches`` to the last step. ``forward`` runs under autocast; the loop
        logs each value's mean over the global batch, ``loss`` first in the progress bar.
        ``report(step)`` runs on the main process before that step's checkpoint, so a run
        resumed from it never misses a report."""
        from tqdm import tqdm

        acc, plan = self.accelerator, self.plan
        # its own generator: making the iterator must not consume the global RNG (saved and
        # restored with checkpoints, it drives the models' own random draws)
        loader = torch.utils.data.DataLoader(batches, batch_size=None,
                                             num_workers=self.cfg.num_workers,
                                             generator=torch.Generator(),
                                             worker_init_fn=ignore_stop_signals)  # fmt: skip
        bar = tqdm(total=self.total, initial=self.step, unit="step", desc=self.name,
                   disable=not (self.progress and self.main))  # fmt: skip
        sums: dict[str, torch.Tensor] = {}
        with StopRequests() as stop:
            for k, batch in enumerate(loader):
                last_micro = k % plan.accumulation == plan.accumulation - 1
                batch = _to_device(batch, acc.device)
                try:
                    with self._no_sync(last_micro):
                        with acc.autocast():
                            losses, values = forward(batch, self.step)
                        for loss in losses:
                            acc.backward(loss / plan.accumulation)
                except torch.cuda.OutOfMemoryError as e:
                    raise oom_message(e, plan, self.cfg) from None
                for name, value in values.items():
                    sums[name] = sums.get(name, 0.0) + value.detach().float() / plan.accumulation
                if last_micro:
                    record = {name: acc.reduce(v.to(acc.device), "mean").item()
                              for name, v in sums.items()}  # fmt: skip
                    sums = {}
                    self._step(record, bar, report, stop)
        bar.close()

    def _no_sync(self, last_micro: bool) -> contextlib.ExitStack:
        """Before the last micro-batch, gradients accumulate on each process alone."""
        stack = contextlib.ExitStack()
        if not last_micro:
            for part in self.parts.values():
                stack.enter_context(self.accelerator.no_sync(part.model))
        return stack

    def _step(self, record: dict[str, float], bar, report, stop: StopRequests) -> None:
        acc, cfg = self.accelerator, self.cfg
        check_finite(record["loss"], self.step + 1, self.state, cfg)
        optimizers = [part.optimizer for part in self.parts.values() if part.optimizer]
        lr = set_lr(optimizers, cfg, self.step, self.total)
        norms = []
        for part in self.parts.values():
            if part.optimizer is None or self.step < part.start:
                continue
            norms.append(acc.clip_grad_norm_(part.model.parameters(), cfg.grad_clip))
            part.optimizer.step()
            part.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(acc.unwrap_model(self._first.model))
        self.step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}")
        if self.step % cfg.log_every == 0 or self.step == self.total:
            record = {"step": self.step, **record, "lr": lr, "grad_norm": float(norms[0])}
            self.log.write(record)
            acc.log(record, step=self.step)
        last = self.step == self.total
        if report and self.main and ((cfg.sample_every and self.step % cfg.sample_every == 0)
                                     or last):  # fmt: skip
            report(self.step)
        due = self.step % cfg.checkpoint_every == 0 or last
        if due:
            self._save()
        signum = stop.requested(acc)
        if signum:
            if not due:
                self._save()
            acc.end_training()
            raise stopped(signum, self.step, self.state.latest())

    @property
    def _first(self) -> Part:
        return next(iter(self.parts.values()))

    def _save(self) -> None:
        self.log.sync()
        self.state.save(self.parts, self.ema, self.step, self.log.lines)

    def export(self, save: Callable[[Path], None], curves: tuple[str, ...]) -> Path:
        """After the last step: every process's weight checksum in the log (equal in a
        healthy run), then on the main process ``save(folder)`` writes the export and the
        ``curves`` are drawn. Returns the export folder."""
        acc = self.accelerator
        raw = acc.unwrap_model(self._first.model)
        sums = acc.gather(torch.tensor([weights_checksum(raw)], device=acc.device))
        self.log.write({"step": self.step, "weights_checksum_per_rank": sums.tolist()})
        export = self.run_dir / "export"
        if self.main:
            save(export)
            plot_curves(self.run_dir, curves)
        acc.wait_for_everyone()
        acc.end_training()
        return export


def _to_device(batch, device: torch.device):
    if isinstance(batch, dict):
        return {key: value.to(device) for key, value in batch.items()}
    return batch.to(device)


def check_finite(loss: float, step: int, state: TrainingState, cfg: TrainConfig) -> None:
    if math.isfinite(loss):
        return
    last = state.latest()
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
    """A float64 sum over all parameters (whole, if sharded): equal on every process of a
    healthy run."""
    return float(sum(whole(p.detach()).double().sum() for p in model.parameters()))
