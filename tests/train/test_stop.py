"""Ctrl-C, SIGTERM and SIGUSR1 during training: a checkpoint at the next step boundary, one
line saying where it is and how to resume, and a resumed run equal to an uninterrupted one."""

import os
import signal
import time

import pytest

from ..pipeline import tree

# commands in processes of their own, on the tiny pipeline (see tests/pipeline.py)
pytestmark = pytest.mark.slow

LONGER = ["--set", "train.max_steps=30", "--set", "train.checkpoint_every=100",
          "--set", "train.sample_every=0"]  # fmt: skip


def _interrupt(cli, pipeline, stage: str, signum: int):
    """Run ``stage`` (30 steps, no checkpoint before the end) and send ``signum`` once it has
    logged a few steps; returns its result."""
    run = pipeline.restore(stage)
    job = cli.start([*pipeline.command(stage), *LONGER], run, env=pipeline.env())
    metrics = run / "runs" / stage.removeprefix("train-") / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.is_file() or metrics.read_text().count("\n") < 3):
        time.sleep(0.01)
    os.kill(job.pid, signum)
    return run, job.wait()


def test_sigterm_saves_at_the_step_boundary_and_the_resumed_run_is_exact(pipeline, cli):
    run, stopped = _interrupt(cli, pipeline, "train-ar", signal.SIGTERM)
    assert stopped.code == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    line = stopped.lines[-1]
    assert line.startswith("stopped: SIGTERM at step ") and "Traceback" not in stopped.stderr
    step = int(line.split("at step ")[1].split(":")[0])
    assert 3 <= step < 30 and f"runs/ar/checkpoints/step-{step:08d}" in line
    assert "rerun `spherear train-ar --recipe ar.toml" in line
    assert (run / "runs/ar/checkpoints" / f"step-{step:08d}" / "state.json").is_file()
    resumed = cli.run([*pipeline.command("train-ar"), *LONGER], run, env=pipeline.env())
    assert resumed.code == 0, resumed.stderr[-3000:]
    interrupted = tree(run)
    straight = pipeline.restore("train-ar")
    assert cli.run([*pipeline.command("train-ar"), *LONGER], straight, env=pipeline.env()).code == 0
    assert interrupted == tree(straight)


@pytest.mark.parametrize(
    ("stage", "signum"), [("train-vae", signal.SIGUSR1), ("train-ar", signal.SIGINT)]
)
def test_sigusr1_and_ctrl_c_stop_cleanly_too(pipeline, cli, stage, signum):
    run, stopped = _interrupt(cli, pipeline, stage, signum)
    assert stopped.code == 128 + signum, stopped.stderr[-3000:]
    assert stopped.lines[-1].startswith(f"stopped: {signal.Signals(signum).name} at step ")
    assert "Traceback" not in stopped.stderr
    assert list((run / "runs" / stage.removeprefix("train-") / "checkpoints").glob("step-*"))
