"""A kill at every write point of every stage, then a rerun: the workspace ends byte for
byte as after an uninterrupted run, with no temporary left behind.

``SPHEREAR_CRASH_AT=POINT[#N]`` makes the process SIGKILL itself at the N-th time it
reaches POINT (after writing the temporary, before renaming it; an append leaves half a
line). The table names the points of each stage; the reference run checks that each stage
reaches exactly these points, so a new write point needs a row here.
"""

import pytest

from .pipeline import tree

# commands in processes of their own, on the tiny pipeline (see tests/pipeline.py)
pytestmark = pytest.mark.slow

CRASHES = {
    "prepare-data": ["prepare/start", "prepare/shard#1", "prepare/shard#2", "prepare/bad_images",
                     "prepare/info", "prepare/publish"],
    "train-vae": ["recipe#1", "run-record", "train-vae/held-out", "metrics#1", "grid#1",
                  "checkpoint/file#1", "checkpoint/state#1", "checkpoint/publish#1", "metrics#5",
                  "checkpoint/prune#1", "export/weights", "recipe#2", "export/config",
                  "export/publish", "curves"],
    "cache-latents": ["cache/settings", "cache/shard#1", "cache/shard#3", "cache/manifest"],
    "train-ar": ["recipe#1", "run-record", "metrics#1", "grid#1", "checkpoint/file#1",
                 "checkpoint/state#1", "checkpoint/publish#1", "metrics#3", "checkpoint/prune#1",
                 "grid#2", "export/weights#2", "recipe#2", "export/config", "export/publish",
                 "curves"],
    "sample": ["sample/settings", "sample/chunk#1", "sample/chunk#2", "sample/token-stats",
               "token-stats/plot", "grid", "sample/labels", "sample/npz", "sample/cleanup"],
    "eval-fid": ["features/cache", "eval-fid/report"],
}  # fmt: skip
TABLE = [(stage, point) for stage, points in CRASHES.items() for point in points]


def _name(point: str) -> str:
    return point.split("#")[0]


@pytest.mark.parametrize("stage", CRASHES)
def test_the_table_holds_every_write_point_a_stage_reaches(pipeline, stage):
    reached = pipeline.points[stage]
    assert {_name(p) for p in reached} == {_name(p) for p in CRASHES[stage]}
    missing = [p for p in CRASHES[stage] if p not in reached and f"{p}#1" not in reached]
    assert not missing, f"{stage} never reaches {missing}; it reached {reached}"


@pytest.mark.parametrize(("stage", "point"), TABLE, ids=[f"{s}:{p}" for s, p in TABLE])
def test_a_kill_at_a_write_point_then_a_rerun_equals_an_uninterrupted_run(
    pipeline, cli, stage, point
):
    run = pipeline.restore(stage)
    argv, env = pipeline.command(stage), pipeline.env()
    killed = cli.run(argv, run, env={**env, "SPHEREAR_CRASH_AT": point})
    assert killed.code == -9, f"it did not die at {point}: {killed.stderr[-2000:]}"
    again = cli.run(argv, run, env=env)
    assert again.code == 0, again.stderr[-3000:]
    now, expected = tree(run), pipeline.after(stage)
    extra, missing = sorted(set(now) - set(expected)), sorted(set(expected) - set(now))
    assert not extra and not missing, f"left over: {extra}; missing: {missing}"
    differ = [name for name in expected if now[name] != expected[name]]
    assert not differ, f"not the bytes of an uninterrupted run: {differ}"
