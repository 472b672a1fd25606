import pytest

from spherear.config import TrainConfig
from spherear.train import TrainingError
from spherear.train.batches import BatchPlan, global_batch_items, item_seed, steps_per_epoch


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
