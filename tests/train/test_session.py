"""What a run folder records and lets continue."""

import dataclasses
import json

import pytest

from spherear.config import load_recipe, save_recipe
from spherear.train import TrainingError
from spherear.train.session import check_resume, record_run

from ..conftest import ROOT


def test_a_run_from_before_class_names_were_recorded_resumes(tiny_recipe, tmp_path):
    save_recipe(tiny_recipe, tmp_path)  # ar.class_names empty, as older runs saved it
    names = tuple(f"c{i}" for i in range(tiny_recipe.ar.num_classes))
    check_resume(
        dataclasses.replace(tiny_recipe, ar=dataclasses.replace(tiny_recipe.ar, class_names=names)),
        tmp_path,
    )
    wider = dataclasses.replace(tiny_recipe.ar, num_classes=tiny_recipe.ar.num_classes + 1)
    with pytest.raises(TrainingError, match="another architecture"):
        check_resume(dataclasses.replace(tiny_recipe, ar=wider), tmp_path)


def test_an_ar_run_of_spherear_0_1_does_not_continue(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "tiny.toml")
    run = tmp_path / "run"
    run.mkdir()
    record_run(recipe, run)
    assert json.loads((run / "run.json").read_text()) == {
        "rope": "2d-centre-x-first",
        "precision": "fp32",
    }
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
