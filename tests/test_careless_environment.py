"""The smaller careless cases: a recipe saved with a byte-order mark, a raw pickle given as a
checkpoint, an empty samples file, a HOME that cannot be written."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from spherear.cli import app

from .conftest import ROOT, one_line_error

runner = CliRunner()


def test_a_recipe_with_a_byte_order_mark_loads(tmp_path):
    from spherear.config import load_recipe

    text = (ROOT / "recipes" / "tiny.toml").read_text()
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert load_recipe(tmp_path / "bom.toml") == load_recipe(ROOT / "recipes" / "tiny.toml")


def test_a_raw_pickle_is_refused_in_one_line_without_warnings(tmp_path):
    (tmp_path / "raw.pt").write_bytes(pickle.dumps({"model": {"w": [1.0, 2.0]}}))
    result = runner.invoke(app, ["info", "--checkpoint", str(tmp_path / "raw.pt")])
    one_line_error(result, "raw.pt")
    assert "Warning" not in result.stderr


def test_an_empty_samples_file_is_refused_before_any_probe(tmp_path):
    np.savez(tmp_path / "S.npz", np.zeros((0, 32, 32, 3), np.uint8))
    np.save(tmp_path / "labels.npy", np.zeros(0, np.int64))
    (tmp_path / "d").mkdir()
    result = runner.invoke(app, ["eval-probe", str(tmp_path / "S.npz"), "--data",
                                 str(tmp_path / "d")])  # fmt: skip
    one_line_error(result, "arr_0 holds no images (shape (0, 32, 32, 3))")


def test_a_home_that_cannot_be_written_moves_the_cache(tmp_path, monkeypatch, capsys):
    from spherear import files

    blocked = tmp_path / "home"
    blocked.write_text("a file where HOME's folders would be")  # mkdir under it must fail
    monkeypatch.setenv("HOME", str(blocked))
    monkeypatch.delenv("SPHEREAR_CACHE")
    monkeypatch.setattr(files, "_fallbacks_said", set())
    folder = files.cache_dir("probes")
    assert not str(folder).startswith(str(blocked)) and folder.is_dir()
    assert Path(folder).name == "probes"
    assert f"{blocked}/.cache/spherear/probes cannot be written" in capsys.readouterr().err
