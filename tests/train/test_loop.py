import pytest
import torch

from spherear.config import TrainConfig
from spherear.train.loop import (
    EMA,
    BatchPlan,
    TrainingError,
    global_batch_items,
    item_seed,
    lr_factor,
    param_groups,
    steps_per_epoch,
)


def test_batch_plan_fills_the_global_batch_with_accumulation():
    cfg = TrainConfig(global_batch_size=512, micro_batch_size=32)
    assert BatchPlan.make(cfg, 8).accumulation == 2
    assert BatchPlan.make(cfg, 1).accumulation == 16
    plan = BatchPlan.make(cfg, 4)
    covered = sorted(p for r in range(4) for m in range(plan.accumulation)
                     for p in plan.positions(r, m))  # fmt: skip
    assert covered == list(range(512))
    with pytest.raises(TrainingError, match="not a multiple of train.micro_batch_size 32 x 3"):
        BatchPlan.make(cfg, 3)


def test_each_epoch_visits_every_item_once():
    plan = BatchPlan.make(TrainConfig(global_batch_size=10, micro_batch_size=10), 1)
    per_epoch = steps_per_epoch(35, 10)
    assert per_epoch == 3
    seen = [i for s in range(per_epoch) for i in global_batch_items(35, plan, 0, s, per_epoch)[0]]
    assert len(set(seen)) == 30
    second = global_batch_items(35, plan, 0, per_epoch, per_epoch)
    assert second[1] == 1.0 and second[0] != global_batch_items(35, plan, 0, 0, per_epoch)[0]
    with pytest.raises(TrainingError, match="fewer than train.global_batch_size"):
        steps_per_epoch(5, 10)


def test_item_seeds_differ_by_step_and_position():
    seeds = {item_seed(0, s, p) for s in range(20) for p in range(20)}
    assert len(seeds) == 400 and item_seed(0, 3, 4) == item_seed(0, 3, 4)


def test_warmup_then_cosine_to_min_lr():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-5, warmup_steps=10, lr_schedule="cosine")
    assert lr_factor(0, cfg, 110) == pytest.approx(0.1)
    assert lr_factor(9, cfg, 110) == pytest.approx(1.0)
    assert lr_factor(60, cfg, 110) == pytest.approx((1 + 0.01) / 2)
    assert lr_factor(110, cfg, 110) == pytest.approx(0.01)
    constant = TrainConfig(lr=1e-3, warmup_steps=0, lr_schedule="constant")
    assert lr_factor(500, constant, 110) == 1.0


def test_no_decay_on_norms_biases_and_named_modules():
    model = torch.nn.ModuleDict({"proj_in": torch.nn.Linear(3, 4), "body": torch.nn.Linear(4, 4),
                                 "norm": torch.nn.LayerNorm(4)})  # fmt: skip
    decay, keep = param_groups(model, 0.05, ("proj_in",))
    assert [p.shape for p in decay["params"]] == [(4, 4)]
    assert len(keep["params"]) == 5 and keep["weight_decay"] == 0.0


def test_ema_moves_towards_the_weights():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, 0.9)
    start = ema.shadow["weight"].clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow["weight"], start + 0.1)
    state = ema.full_state(model)
    torch.testing.assert_close(state["weight"], start + 0.1)
