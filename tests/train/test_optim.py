import pytest
import torch

from spherear.config import TrainConfig
from spherear.train.optim import EMA, lr_factor, param_groups


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
    state = ema.full_state(model.state_dict())
    torch.testing.assert_close(state["weight"], start + 0.1)
