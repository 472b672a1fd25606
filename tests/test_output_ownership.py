"""Who may write where: no command writes over one of its inputs or into a spherear folder
of another kind, one writer at a time per output folder (a killed writer's lock is taken
over), and a run resumes only with the settings it was trained with unless told to."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spherear.cli import app
from spherear.config import load_recipe

from .conftest import ROOT, one_line_error

runner = CliRunner()


def _export(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"format": "spherear", "kind": "ar"}))
    return folder


def _samples(path: Path, n: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, np.zeros((n, 8, 8, 3), np.uint8))
    np.save(path.parent / "labels.npy", np.zeros(n, np.int64))
    return path


def _prepared(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "info.json").write_text(json.dumps({"settings": {}}))
    return folder


def _cache(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text(json.dumps({"vae_sha256": "0" * 64}))
    return folder


def _run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"rope": "2d-centre-x-first"}))
    return folder


# (id, the workspace it needs -> the command's arguments, what the one line says)
CONFLICTS = [
    ("eval-fid-json-over-samples",
     lambda w: ["eval-fid", str(_samples(w / "s" / "S.npz")), "--json", str(w / "s" / "S.npz")],
     "would write over this command's input"),
    ("eval-probe-json-over-export",
     lambda w: ["eval-probe", str(_samples(w / "s" / "S.npz")), "--data", str(_prepared(w / "d")),
                "--json", str(_export(w / "x") / "config.json")],
     "config.json marks a spherear folder"),
    ("eval-probe-json-over-labels",
     lambda w: ["eval-probe", str(_samples(w / "s" / "S.npz")), "--data", str(_prepared(w / "d")),
                "--json", str(w / "s" / "labels.npy")],
     "would write over this command's input"),
    ("sample-into-its-export",
     lambda w: ["sample", "--n", "4", "-c", str(_export(w / "x")), "--out", str(w / "x")],
     "would write over this command's input"),
    ("sample-into-prepared-data",
     lambda w: ["sample", "--n", "4", "-c", str(_export(w / "x")), "--out",
                str(_prepared(w / "d"))],
     "is a prepared dataset (info.json), not a sample set"),
    ("sample-into-a-runs-root",
     lambda w: [_run(w / "runs" / "ar"), "sample", "--n", "4", "-c", str(_export(w / "x")),
                "--out", str(w / "runs")][1:],
     "holds a training run"),
    ("sample-inside-a-cache",
     lambda w: ["sample", "--n", "4", "-c", str(_export(w / "x")), "--out",
                str(_cache(w / "lat") / "s")],
     "which is a latent cache (settings.json)"),
    ("run-inside-the-latent-cache",
     lambda w: ["train-ar", "-r", str(ROOT / "recipes" / "tiny.toml"), "--set",
                f"run.output_dir='{_cache(w / 'lat') / 'run'}'"],
     "which is a latent cache"),
    ("run-is-the-latent-cache",
     lambda w: ["train-ar", "-r", str(ROOT / "recipes" / "tiny.toml"), "--set",
                f"run.output_dir='{w / 'lat'}'", "--set", f"data.latents='{w / 'lat'}'"],
     "would write over this command's input"),
    ("empty-run-dir",
     lambda w: ["train-ar", "-r", str(ROOT / "recipes" / "tiny.toml"), "--set",
                "run.output_dir=''"],
     "run.output_dir is empty"),
    ("prepare-into-its-source",
     lambda w: ["prepare-data", "--source", f"folder:{_prepared(w / 'img')}", "--out",
                str(w / "img" / "out")],
     "would write over this command's input"),
]  # fmt: skip


@pytest.mark.parametrize("make,words", [c[1:] for c in CONFLICTS], ids=[c[0] for c in CONFLICTS])
def test_no_command_writes_over_an_input_or_into_another_kind(tmp_path, make, words):
    args = make(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    one_line_error(runner.invoke(app, args), words)
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert after == before  # nothing written, nothing touched


# ---------------------------------------------------------------------------------------
# One writer per folder


HOLDER = """
import sys, time
from spherear.folder_lock import hold
with hold(sys.argv[1], "test-holder"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_live_lock_is_refused_and_a_killed_ones_is_taken_over(tmp_path):
    from spherear.folder_lock import LockedError, hold, lock_path

    folder = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    assert holder.stdout.readline() == "held\n"
    with (
        pytest.raises(LockedError, match=f"another writer holds it \\(PID {holder.pid} on "),
        hold(folder, "test"),
    ):
        pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert lock_path(folder).is_file()  # a kill -9 leaves the file behind
    assert f"pid={holder.pid} " in lock_path(folder).read_text()
    with hold(folder, "test"):  # taken over
        assert f"pid={os.getpid()} " in lock_path(folder).read_text()
    assert not lock_path(folder).exists()  # released: gone


def _spherear(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "spherear", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_two_prepare_data_into_one_folder_and_a_kill_9(tmp_path):
    args = ("prepare-data", "--source", "synthetic", "--out", "p", "--resolution", "16")
    first = _spherear(*args, "--num-images", "40000", cwd=tmp_path)
    deadline = time.time() + 60
    while not (tmp_path / ".p.partial").exists() and time.time() < deadline:
        time.sleep(0.05)
    second = _spherear(*args, "--num-images", "40000", cwd=tmp_path)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2, err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(f"error: p: another writer holds it (PID {first.pid}")
    )
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    again = _spherear(*args, "--num-images", "300", cwd=tmp_path)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert json.loads((tmp_path / "p" / "info.json").read_text())["num_images"] == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # no lock, no .partial left


# ---------------------------------------------------------------------------------------
# Resuming with other settings


@pytest.mark.parametrize(
    "override,shown",
    [("train.lr=1e-3", "train.lr 0.003 there, 0.001 here"),
     ("train.global_batch_size=64", "train.global_batch_size 32 there, 64 here"),
     ("run.seed=7", "run.seed 0 there, 7 here")],
)  # fmt: skip
def test_a_resume_with_other_settings_needs_allow_changes(tmp_path, override, shown):
    from spherear.train import TrainingError
    from spherear.train.session import check_resume, record_run

    base = [f"run.output_dir='{tmp_path / 'run'}'", "train.lr=3e-3", "train.global_batch_size=32"]
    recipe = load_recipe(ROOT / "recipes" / "tiny.toml", base)
    run = tmp_path / "run"
    record_run(recipe, run)
    assert check_resume(recipe, run) == ""  # nothing trained: a fresh start may change all
    (run / "checkpoints" / "step-00000010").mkdir(parents=True)
    longer = load_recipe(ROOT / "recipes" / "tiny.toml", [*base, "train.max_steps=99"])
    assert check_resume(longer, run) == ""  # training longer is no change of settings
    changed = load_recipe(ROOT / "recipes" / "tiny.toml", [*base, override])
    with pytest.raises(TrainingError, match="was trained with other settings") as e:
        check_resume(changed, run)
    assert shown in str(e.value) and "--allow-changes" in str(e.value)
    changes = check_resume(changed, run, allow_changes=True)
    assert changes == shown
    record_run(changed, run, changes)
    history = json.loads((run / "run.json").read_text())["allowed_changes"]
    assert [h["changes"] for h in history] == [shown]
