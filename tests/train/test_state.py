"""Training state without pickle: a checkpoint restores the weights, the optimiser, the EMA
and the random generators exactly; a damaged one is set aside for the one before it; only
the newest ``keep`` stay; a run folder holding a pickle is refused."""

import pytest
import torch
from safetensors.torch import load_file

from spherear.accelerator import make_accelerator
from spherear.train import TrainingError
from spherear.train.optim import EMA
from spherear.train.state import Part, TrainingState, refuse_pickles


def trained(seed: int) -> tuple[dict[str, Part], EMA]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    ema = EMA(model, 0.9)
    for _ in range(2):
        model(torch.randn(4, 3)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.update(model)
    return {"model": Part(model, optimizer)}, ema


def test_a_checkpoint_restores_everything_and_a_damaged_one_falls_back(tmp_path, capsys):
    state = TrainingState(tmp_path, keep=2, accelerator=make_accelerator())
    for step in (1, 2, 3):
        parts, ema = trained(step)
        state.save(parts, ema, step, metrics_lines=10 * step)
    assert [p.name for p in state.all()] == ["step-00000002", "step-00000003"]
    saved = load_file(tmp_path / "checkpoints" / "step-00000002" / "model.safetensors")
    with open(tmp_path / "checkpoints" / "step-00000003" / "model.safetensors", "r+b") as f:
        f.truncate(50)

    parts, ema = trained(99)
    resumed = state.resume(parts, ema, print)
    rng = torch.get_rng_state()
    assert (resumed.step, resumed.metrics_lines) == (2, 20)
    model, optimizer = parts["model"].model, parts["model"].optimizer
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in saved.items())
    expected_parts, expected_ema = trained(2)
    assert torch.equal(rng, torch.get_rng_state())  # as it was when step 2 was saved
    expected = expected_parts["model"].optimizer.state_dict()["state"]
    for k, v in optimizer.state_dict()["state"].items():
        assert all(torch.equal(v[name], expected[k][name]) for name in v)
    assert all(torch.equal(ema.shadow[k], v) for k, v in expected_ema.shadow.items())
    assert (tmp_path / "checkpoints" / "damaged-step-00000003").is_dir()
    said = capsys.readouterr().err
    assert "step-00000003: damaged (model.safetensors has 50 bytes" in said
    assert "set aside as damaged-step-00000003, resuming from step-00000002" in said


def test_a_pickle_in_the_run_folder_is_refused(tmp_path):
    refuse_pickles(tmp_path)
    (tmp_path / "notes.pkl").write_bytes(b"")
    with pytest.raises(TrainingError, match="notes.pkl: a pickle in the run folder"):
        refuse_pickles(tmp_path)
