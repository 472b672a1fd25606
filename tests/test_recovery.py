"""What a rerun does with what it finds: damaged artefacts are named and made again (or, for
training, the previous checkpoint is used), a run continued with another thread count
computes as the one that started it, a moved workspace is still recognised, and nothing
lands in HOME."""

import json
import shutil

import pytest

from .pipeline import SAMPLES, tree

# commands in processes of their own, on the tiny pipeline (see tests/pipeline.py)
pytestmark = pytest.mark.slow


def _truncate(path, size: int = 100) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


@pytest.mark.parametrize(
    ("stage", "damaged", "said"),
    [
        ("prepare-data", "data/prepared/data/shard-00001.parquet", "preparing that shard again"),
        ("cache-latents", "data/latents/shard-00001.safetensors", "encoding it again"),
        ("cache-latents", "data/latents/manifest.json", "checking the shards and writing it"),
        ("sample", SAMPLES, "sampling it again"),
    ],
    ids=["prepared-shard", "cache-shard", "cache-manifest", "samples-npz"],
)
def test_a_damaged_artefact_is_named_and_made_again(pipeline, cli, stage, damaged, said):
    run = pipeline.restore(stage, after=True)
    _truncate(run / damaged, 0 if damaged.endswith(".json") else 100)
    done = cli.run(pipeline.command(stage), run, env=pipeline.env())
    assert done.code == 0, done.stderr[-3000:]
    assert f"note: {damaged}" in done.stderr and said in done.stderr
    assert tree(run) == pipeline.after(stage)


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(pipeline, cli):
    run = pipeline.restore("train-ar")
    argv, env = pipeline.command("train-ar"), pipeline.env()
    killed = cli.run(argv, run, env={**env, "SPHEREAR_CRASH_AT": "checkpoint/prune"})
    assert killed.code == -9  # step 2 and step 4 are both there
    _truncate(run / "runs/ar/checkpoints/step-00000004/model.safetensors")
    done = cli.run(argv, run, env=env)
    assert done.code == 0, done.stderr[-3000:]
    assert "step-00000004: damaged (model.safetensors has 100 bytes" in done.stderr
    assert "set aside as damaged-step-00000004, resuming from step-00000002" in done.stderr
    now, expected = tree(run), pipeline.after("train-ar")
    aside = {name for name in now if "damaged-step-00000004" in name}
    assert aside and {k: v for k, v in now.items() if k not in aside} == expected


@pytest.mark.parametrize(
    ("stage", "point"),
    [("cache-latents", "cache/shard#2"), ("train-ar", "metrics#3"), ("sample", "sample/chunk#2")],
)
def test_a_run_continued_with_more_threads_computes_with_its_own(pipeline, cli, stage, point):
    run = pipeline.restore(stage)
    argv, env = pipeline.command(stage), pipeline.env()
    assert cli.run(argv, run, env={**env, "SPHEREAR_CRASH_AT": point}).code == -9
    done = cli.run(argv, run, env=env, threads=2)
    assert done.code == 0, done.stderr[-3000:]
    assert "computed with 1 intra-op thread(s); continuing with 1 instead of 2" in done.stderr
    assert tree(run) == pipeline.after(stage)


def test_a_moved_workspace_is_still_recognised(pipeline, cli):
    finished = pipeline.restore("eval-fid", after=True)
    moved = pipeline.root / "moved"
    shutil.rmtree(moved, ignore_errors=True)
    shutil.move(finished, moved)
    before = tree(moved)
    env = {**pipeline.env(), "HOME": str(moved / "home"), "SPHEREAR_CACHE": str(moved / "cache")}
    for stage in ("prepare-data", "cache-latents", "sample"):
        done = cli.run(pipeline.command(stage), moved, env=env)
        assert done.code == 0 and "other settings" not in done.stderr, done.stderr[-2000:]
    assert "already prepared" in cli.run(pipeline.command("prepare-data"), moved, env=env).stdout
    assert tree(moved) == before


def test_home_gets_no_copy_of_the_data(pipeline):
    """train-vae read the prepared images and eval-fid computed features with HOME (and the
    Hugging Face cache) pointed into the workspace: nothing was written there."""
    home = pipeline.snapshots["eval-fid"] / "home"
    assert home.is_dir() and not any(home.rglob("*"))


def test_a_checkpoint_records_its_numerics_and_files(pipeline):
    state = json.loads(
        (
            pipeline.snapshots["train-ar"] / "runs/ar/checkpoints/step-00000004/state.json"
        ).read_text()
    )
    assert state["numerics"]["threads"] == 1 and state["numerics"]["device"] == "cpu"
    assert set(state["files"]) == {"model.safetensors", "model.optimizer.safetensors",
                                   "ema.safetensors", "rng.safetensors"}  # fmt: skip
    assert state["step"] == 4 and state["metrics_lines"] == 4
