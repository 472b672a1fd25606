"""train-ar on a CPU in bf16 and under torch.compile, against the fp32 eager run."""

import json
import shutil

import pytest
from safetensors.torch import load_file

from ..conftest import kill_when
from .conftest import ENV, SPHEREAR, STEPS, largest_difference, losses, train

pytestmark = pytest.mark.slow
BF16 = ("--set", "train.mixed_precision=bf16")


def test_bf16_training_stays_near_fp32_and_resumes_exactly(ar_workspace, straight):
    done = train(ar_workspace, "bf16", *BF16)
    assert done.returncode == 0, done.stderr[-3000:]
    run = ar_workspace / "bf16"
    assert json.loads((run / "run.json").read_text())["precision"] == "bf16"
    assert json.loads((straight / "run.json").read_text())["precision"] == "fp32"
    fp32, bf16 = losses(straight), losses(run)
    assert list(bf16) == list(range(1, STEPS + 1))
    # it did compute in bf16 (the zero-initialised head makes step 1 equal in both) ...
    assert any(fp32[s] != bf16[s] for s in fp32)
    # ... and its losses stay within bf16's relative resolution, 2^-8, of the fp32 run's
    assert max(abs(fp32[s] - bf16[s]) / fp32[s] for s in fp32) <= 2**-8

    killed = ar_workspace / "bf16_killed"
    cmd = [*SPHEREAR, "train-ar", "--recipe", str(ar_workspace / "recipe.toml"),
           "--set", f"run.output_dir={killed}", *BF16]  # fmt: skip
    kill_when(cmd, (killed / "checkpoints" / "step-00000004").exists, env=ENV)
    assert not (killed / "export").exists(), "the run ended before it could be killed"
    done = train(ar_workspace, "bf16_killed", *BF16)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [losses(killed)[s] for s in range(5, STEPS + 1)] == [
        bf16[s] for s in range(5, STEPS + 1)
    ]
    for name in ("ar.safetensors", "ar_raw.safetensors"):
        a, b = load_file(run / "export" / name), load_file(killed / "export" / name)
        assert largest_difference(a, b) == 0


def test_a_run_resumes_under_compile_and_trains_as_eager(ar_workspace, straight):
    """The eager run's checkpoint at step 4, continued with train.compile = true."""
    run = ar_workspace / "compiled"
    shutil.copytree(straight, run)
    shutil.rmtree(run / "export")
    shutil.rmtree(run / "checkpoints" / f"step-{STEPS:08d}")
    done = train(ar_workspace, "compiled", "--set", "train.compile=true")
    assert done.returncode == 0, done.stderr[-3000:]
    eager, compiled = losses(straight), losses(run)
    assert list(compiled) == list(range(1, STEPS + 1))
    # inductor reorders and fuses fp32 sums: rounding differences only, where fp32's spacing
    # near these losses (about 2) is 2.4e-7 and near the weights (below 1.1) 1.2e-7
    assert max(abs(eager[s] - compiled[s]) for s in range(5, STEPS + 1)) <= 1e-5
    for name in ("ar.safetensors", "ar_raw.safetensors"):
        a, b = load_file(straight / "export" / name), load_file(run / "export" / name)
        assert largest_difference(a, b) <= 1e-5
