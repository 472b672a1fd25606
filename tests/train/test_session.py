"""Grids, and what a run folder records and lets continue."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from spherear.config import load_recipe, save_recipe
from spherear.train.loop import TrainingError
from spherear.train.session import check_resume, record_run, save_grid

from ..conftest import ROOT


@pytest.mark.parametrize("n, nrow", [(7, 3), (32, 4), (10, 10)])
def test_grid_is_byte_identical_to_torchvision(tmp_path, n, nrow):
    from torchvision.utils import save_image

    images = torch.rand(n, 3, 8, 6, generator=torch.Generator().manual_seed(n)) * 2.2 - 1.1
    save_image(((images + 1) / 2).clamp(0, 1), tmp_path / "torchvision.png", nrow=nrow)
    save_grid(images, tmp_path / "grid.png", nrow)
    ours = np.asarray(Image.open(tmp_path / "grid.png"))
    assert np.array_equal(ours, np.asarray(Image.open(tmp_path / "torchvision.png")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "torchvision.png"]


def test_row_labels_go_in_a_margin_left_of_an_unchanged_grid(tmp_path):
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    save_grid(images, tmp_path / "plain.png", 3)
    save_grid(images, tmp_path / "named.png", 3, row_labels=["cat", "a much longer name"])
    plain = np.asarray(Image.open(tmp_path / "plain.png"))
    named = np.asarray(Image.open(tmp_path / "named.png"))
    margin = named.shape[1] - plain.shape[1]
    assert named.shape[0] == plain.shape[0] and margin > 0
    assert np.array_equal(named[:, margin:], plain)  # the images are where they were
    rows = [named[2 + r * 18 : 2 + r * 18 + 16, :margin] for r in range(2)]
    widths = [np.flatnonzero(row.max((0, 2)) > 0).max() for row in rows]  # text drawn in white
    assert 0 < widths[0] < widths[1] < margin  # each name on its own row, the longer wider


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
