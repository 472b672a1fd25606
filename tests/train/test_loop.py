"""The shared loop, in-process on a linear model: micro-batches equal the whole batch, a
part trains only from its start step, reports and checkpoints come at their cadence and at
the last step, and a non-finite loss stops the run naming the last good checkpoint."""

from pathlib import Path

import pytest
import torch

from spherear.config import Recipe, RunConfig, TrainConfig
from spherear.train import TrainingError
from spherear.train.batches import StepBatches
from spherear.train.loop import Loop
from spherear.train.metrics import read_metrics
from spherear.train.optim import adamw
from spherear.train.state import Part


class Points(StepBatches):
    def example(self, index: int, seed: int, epoch: float) -> torch.Tensor:
        return torch.randn(3, generator=torch.Generator().manual_seed(seed))


def train(run: Path, micro: int = 8, late: int = 0, nan_at: int = -1, **settings):
    """Six steps of a linear fit (and of a second part from step ``late``); returns the
    loop, the steps reported and the two models."""
    cfg = TrainConfig(global_batch_size=8, micro_batch_size=micro, max_steps=6, lr=1e-2,
                      warmup_steps=0, log_every=1, checkpoint_every=4, sample_every=4,
                      num_workers=0, mixed_precision="no", log_with="none", **settings)  # fmt: skip
    loop = Loop(Recipe(run=RunConfig(output_dir=str(run)), train=cfg), "test", 32, progress=False)
    model, other = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    start = [p.detach().clone() for p in other.parameters()]
    opt, opt_other = adamw(model, cfg, fused=False), adamw(other, cfg, fused=False)
    model, other, opt, opt_other = loop.accelerator.prepare(model, other, opt, opt_other)
    first = loop.resume({"model": Part(model, opt), "other": Part(other, opt_other, late)})

    def forward(x: torch.Tensor, step: int):
        loss = (model(x).squeeze(-1) - x.sum(-1)).square().mean()
        loss = loss + 0 * other(x).sum() + (float("nan") if step == nan_at else 0)
        return [loss], {"loss": loss, "mean": x.mean()}

    reports = []
    loop.run(Points(32, loop.plan, 0, first, loop.total, 0), forward, reports.append)
    loop.export(lambda out: out.mkdir(), ("loss",))
    moved = any(not torch.equal(a, b) for a, b in zip(start, other.parameters(), strict=True))
    return loop, reports, model, moved


def test_micro_batches_equal_the_whole_batch(tmp_path):
    _, _, whole, _ = train(tmp_path / "whole")
    _, _, halves, _ = train(tmp_path / "halves", micro=4)
    one, two = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "halves")
    assert [r["step"] for r in one if "loss" in r] == list(range(1, 7))
    for a, b in zip(one, two, strict=True):
        assert a.keys() == b.keys()
        for key in ("loss", "mean", "grad_norm"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    for a, b in zip(whole.parameters(), halves.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert list(one[-1]) == ["step", "weights_checksum_per_rank"]


def test_reports_and_checkpoints_at_their_cadence_and_at_the_last_step(tmp_path):
    loop, reports, _, moved = train(tmp_path / "run", late=100)
    assert reports == [4, 6]
    assert [p.name for p in loop.state.all()] == ["step-00000004", "step-00000006"]
    assert (tmp_path / "run" / "export").is_dir() and (tmp_path / "run" / "curves.png").is_file()
    assert not moved  # a part whose start is not reached never steps
    assert train(tmp_path / "early", late=2)[3]


def test_a_non_finite_loss_stops_at_its_step_keeping_the_last_checkpoint(tmp_path):
    with pytest.raises(TrainingError, match="loss is nan at step 6: training stopped and the "
                       "last good checkpoint, .*step-00000004, is intact"):  # fmt: skip
        train(tmp_path / "run", nan_at=5)
    assert not (tmp_path / "run" / "export").exists()
