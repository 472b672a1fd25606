"""What a run folder records and what it lets continue."""

import json

import pytest

from spherear.config import load_recipe
from spherear.train.loop import TrainingError
from spherear.train.session import check_resume, record_run

from ..conftest import ROOT


def test_an_ar_run_of_spherear_0_1_does_not_continue(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "tiny.toml")
    run = tmp_path / "run"
    run.mkdir()
    record_run(recipe, run)
    assert json.loads((run / "run.json").read_text()) == {"rope": "2d-centre-x-first"}
    (run / "checkpoints" / "step-00000500").mkdir(parents=True)
    check_resume(recipe, run)  # made by this version: goes on
    (run / "run.json").unlink()  # as spherear 0.1 left its runs
    with pytest.raises(TrainingError, match=r"another 2D RoPE table .* delete .*run or set"):
        check_resume(recipe, run)
    (run / "checkpoints" / "step-00000500").rmdir()
    check_resume(recipe, run)  # nothing trained yet: nothing to protect


def test_an_old_vae_run_continues_its_table_is_in_its_checkpoints(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "tiny_vae.toml")
    run = tmp_path / "vae"
    run.mkdir()
    record_run(recipe, run)
    (run / "run.json").unlink()
    (run / "checkpoints" / "step-00000200").mkdir(parents=True)
    check_resume(recipe, run)
