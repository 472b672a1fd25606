"""The smaller careless cases: a recipe saved with a byte-order mark, a raw pickle given as a
checkpoint, an empty samples file, a HOME that cannot be written, matplotlib's cache in HOME."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
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


@pytest.mark.parametrize(
    "draw",
    [
        "from spherear.token_stats import plot, summarise, token_sums\n"
        "import torch\n"
        "plot({'samples': summarise(token_sums(torch.randn(2, 4, 3)))}, OUT / 'norms.png')",
        "from spherear.train.curves import plot_curves\n"
        "(OUT / 'metrics.jsonl').write_text('{\"step\": 1, \"loss\": 1.0}\\n')\n"
        "plot_curves(OUT, ('loss',))",
    ],
    ids=["token norms", "loss curves"],
)
def test_figures_keep_matplotlibs_cache_out_of_home(tmp_path, draw):
    home, out = tmp_path / "home", tmp_path / "out"
    home.mkdir()
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "SPHEREAR_CACHE")}
    code = f"from pathlib import Path\nOUT = Path({str(out)!r})\n{draw}"
    done = subprocess.run([sys.executable, "-c", code], env={**env, "HOME": str(home)},
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert any(p.suffix == ".png" for p in out.iterdir())
    # matplotlib's font cache is spherear's to place: under its cache, not ~/.config or
    # ~/.cache/matplotlib
    assert not (home / ".config").exists() and not (home / ".cache" / "matplotlib").exists()
    assert (home / ".cache" / "spherear" / "matplotlib").is_dir()
