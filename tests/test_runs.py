"""Finding what a command acts on: the newest finished run of a kind, or what was given,
placed in its run."""

import json
import os
from pathlib import Path

import pytest

from spherear.errors import SpherearError
from spherear.runs import Found, find_run


def finished(root: Path, name: str, kind: str, age: int) -> Path:
    run = root / name
    (run / "export").mkdir(parents=True)
    (run / "recipe.toml").write_text("")
    config = run / "export" / "config.json"
    config.write_text(json.dumps({"kind": kind}))
    os.utime(config, ns=(10**9 * (100 - age),) * 2)
    return run


def test_without_a_run_the_newest_of_the_first_kind_that_has_one(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(
        SpherearError, match=r"no finished train-ar run under .*; pass --checkpoint"
    ):
        find_run(None, runs, option="--checkpoint")
    tokenizer = finished(runs, "tokenizer", "vae", age=0)
    how = f"no train-ar run, so the newest train-vae run under {runs}/"
    assert find_run(None, runs, kinds=("ar", "vae")) == Found(
        str(tokenizer / "export"), tokenizer, how
    )
    finished(runs, "old", "ar", age=2)
    new = finished(runs, "deep/new", "ar", age=1)
    assert find_run(None, runs, kinds=("ar", "vae")).run == new
    assert find_run(None, runs).how == f"the newest train-ar run under {runs}/"


def test_what_was_given_is_placed_in_its_run(tmp_path):
    run = finished(tmp_path, "run", "ar", age=0)
    assert find_run(run) == Found(str(run / "export"), run, "as given")
    assert find_run(run / "export") == Found(str(run / "export"), run, "as given")
    outside = tmp_path / "SphereAR_B.pt"
    assert find_run(outside) == Found(str(outside), None, "as given")
    assert find_run("hf://me/model@v1") == Found("hf://me/model@v1", None, "as given")
