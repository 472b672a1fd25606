"""train.fsdp on a CPU: two processes over gloo, sharded with torch's fully_shard."""

import pytest
import torch
from safetensors.torch import load_file

from spherear.checkpoints import load_checkpoint
from spherear.config import SampleConfig
from spherear.train.metrics import read_metrics

from ..conftest import kill_when
from .conftest import ENV, STEPS, TORCHRUN, largest_difference, losses, train

pytestmark = pytest.mark.slow
FSDP = ("--set", "train.fsdp=true")


@pytest.fixture(scope="module")
def sharded(ar_workspace):
    done = train(ar_workspace, "fsdp", *FSDP, launcher=TORCHRUN)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sharded over 2 process(es)" in done.stderr
    return ar_workspace / "fsdp"


def test_two_sharded_processes_train_as_one_process(sharded, straight):
    checksums = read_metrics(sharded)[-1]["weights_checksum_per_rank"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    one, two = losses(straight), losses(sharded)
    assert list(one) == list(range(1, STEPS + 1)) == list(two)
    # the same sums split over two shards: fp32 rounding only (the DDP test's bound)
    assert max(abs(one[s] - two[s]) for s in one) <= 1e-5
    for name in ("ar.safetensors", "ar_raw.safetensors"):
        a, b = load_file(straight / "export" / name), load_file(sharded / "export" / name)
        assert largest_difference(a, b) <= 1e-5


def test_sharded_run_killed_and_resumed_is_exact(ar_workspace, sharded):
    run = ar_workspace / "fsdp_killed"
    cmd = [*TORCHRUN, "train-ar", "--recipe", str(ar_workspace / "recipe.toml"),
           "--set", f"run.output_dir={run}", *FSDP]  # fmt: skip
    kill_when(cmd, (run / "checkpoints" / "step-00000004").exists, group=True, env=ENV)
    assert not (run / "export").exists(), "the run ended before it could be killed"
    done = train(ar_workspace, "fsdp_killed", *FSDP, launcher=TORCHRUN)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [losses(run)[s] for s in range(5, STEPS + 1)] == [
        losses(sharded)[s] for s in range(5, STEPS + 1)
    ]
    for name in ("ar.safetensors", "ar_raw.safetensors"):
        a, b = load_file(sharded / "export" / name), load_file(run / "export" / name)
        assert largest_difference(a, b) == 0


def test_export_of_a_sharded_run_loads_and_samples_in_one_process(sharded, straight):
    torch.manual_seed(0)
    settings = SampleConfig(cfg=2.0, steps=2)
    tokens = {}
    for run in (sharded, straight):
        loaded = load_checkpoint(str(run / "export"), "ema")
        generator = torch.Generator().manual_seed(0)
        tokens[run] = loaded.ar.sample(torch.tensor([0, 1]), settings, generator)
    # weights within 1e-5 of the one-process run's (above): tokens of the same draws agree
    assert (tokens[sharded] - tokens[straight]).abs().max().item() <= 1e-3
