"""train-ar on CPU: 2 ranks equal 1, exact resume after SIGKILL, guards."""

import sys

import pytest
from safetensors.torch import load_file

from spherear.train.metrics import read_metrics

from ..conftest import kill_when
from .conftest import ENV, STEPS, TORCHRUN, losses, train

# train-ar in processes of its own (and torchrun's two)
pytestmark = pytest.mark.slow


def test_two_ranks_equal_one_process(ar_workspace, straight):
    done = train(ar_workspace, "two", launcher=TORCHRUN)
    assert done.returncode == 0, done.stderr[-3000:]
    checksums = read_metrics(ar_workspace / "two")[-1]["weights_checksum_per_rank"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]  # 2 ranks, same weights
    one, two = losses(straight), losses(ar_workspace / "two")
    assert list(one) == list(range(1, STEPS + 1)) == list(two)
    for step in one:
        assert abs(one[step] - two[step]) <= 1e-5, (step, one[step], two[step])
    a = load_file(straight / "export" / "ar_raw.safetensors")
    b = load_file(ar_workspace / "two" / "export" / "ar_raw.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


def test_sigkill_and_resume_is_exact(ar_workspace, straight):
    run = ar_workspace / "killed"
    cmd = [sys.executable, "-m", "spherear", "train-ar", "--recipe",
           str(ar_workspace / "recipe.toml"), "--set", f"run.output_dir={run}"]  # fmt: skip
    kill_when(cmd, (run / "checkpoints" / "step-00000004").exists, env=ENV)
    assert not (run / "export").exists(), "the run ended before it could be killed"
    done = train(ar_workspace, "killed")
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("ar.safetensors", "ar_raw.safetensors"):  # EMA and raw weights
        a, b = load_file(straight / "export" / name), load_file(run / "export" / name)
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    one, two = losses(straight), losses(run)
    assert [two[s] for s in range(5, STEPS + 1)] == [one[s] for s in range(5, STEPS + 1)]
    assert sorted(two) == list(range(1, STEPS + 1))


def test_a_diverging_run_stops_and_keeps_its_checkpoint(ar_workspace, straight):
    done = train(ar_workspace, "nan", "--set", "train.lr=1e9", "--set", "train.warmup_steps=0",
                  "--set", "train.checkpoint_every=1")  # fmt: skip
    assert done.returncode == 2
    assert "training stopped and the last good checkpoint" in done.stderr
    assert "Traceback" not in done.stderr
    kept = sorted((ar_workspace / "nan" / "checkpoints").glob("step-*"))
    assert kept, "no checkpoint survived"
    state = load_file(kept[-1] / "model.safetensors")  # the checkpoint still reads
    assert set(state) == set(load_file(straight / "export" / "ar_raw.safetensors"))
    assert not (ar_workspace / "nan" / "export").exists()
    again = train(ar_workspace, "nan", "--set", "train.lr=1e9", "--set", "train.warmup_steps=0")
    assert again.returncode == 2 and f"the last good checkpoint, {kept[-1]}" in again.stderr


def test_resuming_with_another_size_is_refused(ar_workspace, straight):
    done = train(ar_workspace, "straight", "--set", "ar.depth=3")
    assert done.returncode == 2 and "another architecture" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_cache_without_the_recipes_views_is_refused(ar_workspace):
    done = train(ar_workspace, "unflipped", "--set", "augment.hflip=false")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    expected = "holds the views ['center', 'center_flip'], but this recipe's augment.hflip = false"
    assert expected in done.stderr and "ask for ['center']" in done.stderr
    assert not (ar_workspace / "unflipped").exists()


def test_training_on_images_encoded_on_the_fly_runs(ar_workspace):
    done = train(
        ar_workspace, "images", "--set", "train.inputs=images", "--set", "train.max_steps=2"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [m["step"] for m in read_metrics(ar_workspace / "images") if "loss" in m] == [1, 2]
