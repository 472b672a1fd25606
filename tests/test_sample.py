"""spherear sample on CPU: 2 processes equal 1, a killed run continues exactly, refusals,
the default paths and the quantisation."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from spherear.checkpoints import save_pretrained
from spherear.config import load_recipe, save_recipe
from spherear.models import build_ar, build_vae
from spherear.sample import SETTINGS, SampleError, check_settings, to_uint8

from .conftest import kill_when

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun's default: the same kernels in both
N, BATCH = 10, 2  # five chunks, one image per class
TAG = "n10-cfg6-linear-steps2-sde-balanced-seed0"  # cfg 6, temperature 1: tiny.toml
SPHERE = (sys.executable, "-m", "spherear")


def _make_run(run: Path, seed: int) -> None:
    recipe = load_recipe(
        ROOT / "recipes" / "tiny.toml",
        ["vae.channels=[16, 32, 32]", "vae.num_heads=2", "vae.encoder_depth=1",
         "vae.decoder_depth=1", "ar.depth=2", "ar.num_heads=2", "ar.width=32",
         "ar.head_depth=2", "ar.head_width=32", "ar.head_groups=2", "sample.steps=2",
         "sample.sampler=sde"],
    )  # fmt: skip
    torch.manual_seed(seed)
    vae, ar = build_vae(recipe), build_ar(recipe)
    with torch.no_grad():  # the zero-initialised head would make every token the same
        for p in ar.head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_recipe(recipe, run)
    save_pretrained(run / "export", recipe, vae, ar.state_dict(), ar.state_dict())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    _make_run(root / "runs" / "new", seed=0)
    _make_run(root / "runs" / "old", seed=1)
    past = time.time() - 3600
    os.utime(root / "runs" / "old" / "export" / "config.json", (past, past))
    return root


def _sample(root: Path, *args: str, launcher=SPHERE):
    # torchrun would read --n as an abbreviation of its own options
    n = "--n" if launcher == SPHERE else "--num-images"
    cmd = [*launcher, "sample", n, str(N), "--batch-size", str(BATCH), *args]
    return subprocess.run(cmd, cwd=root, env=ENV, capture_output=True, text=True)


def _arr(folder: Path) -> np.ndarray:
    with np.load(folder / "samples.npz") as f:
        return f["arr_0"]


@pytest.fixture(scope="module")
def single(workspace):
    """Bare `spherear sample` in the workspace: the newest run, its default folder."""
    done = _sample(workspace)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sampling the newest train-ar run: runs/new" in done.stdout
    out = workspace / "runs" / "new" / "samples" / TAG
    assert f"images in runs/new/samples/{TAG}/samples.npz" in done.stdout
    return out


@pytest.mark.slow
def test_bare_command_samples_the_newest_run_into_its_folder(single):
    arr, labels = _arr(single), np.load(single / "labels.npy")
    assert arr.shape == (N, 32, 32, 3) and arr.dtype == np.uint8
    assert arr.std() > 0 and not np.array_equal(arr[0], arr[1])
    assert labels.dtype == np.int64 and labels.tolist() == list(range(10))
    assert (single / "grid.png").is_file() and (single / "settings.json").is_file()
    assert not (single / "chunks").exists()
    assert sorted(p.name for p in single.iterdir()) == [
        "grid.png", "labels.npy", "samples.npz", "settings.json", "token_norms.png",
        "token_stats.json",
    ]  # fmt: skip
    # tokens of dimension 32 put back on the sphere after CFG: every norm is sqrt(32)
    stats = json.loads((single / "token_stats.json").read_text())
    assert stats["samples"]["images"] == N and "data" not in stats  # no latent cache here
    norm = stats["samples"]["norm"]
    assert abs(norm["min"] - 32**0.5) < 1e-4 and abs(norm["max"] - 32**0.5) < 1e-4
    assert stats["settings"]["normalisation"] == "after_cfg"
    assert json.loads((single / "settings.json").read_text())["normalisation"] == "after_cfg"


@pytest.mark.slow
def test_without_normalisation_the_tokens_leave_the_sphere(workspace):
    done = _sample(workspace, "--normalise", "none", "--checkpoint", "runs/new")
    assert done.returncode == 0, done.stderr[-3000:]
    out = workspace / "runs" / "new" / "samples" / TAG.replace("sde", "sde-norm-none")
    norm = json.loads((out / "token_stats.json").read_text())["samples"]["norm"]
    assert norm["max"] - norm["min"] > 0.1


@pytest.mark.slow
def test_two_processes_write_the_same_bytes_as_one(workspace, single):
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "--module", "spherear")  # fmt: skip
    done = _sample(workspace, "--checkpoint", "runs/new", "--out", "two", launcher=torchrun)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "chunks sampled per process: [3, 2]" in done.stdout  # really two processes
    assert _arr(workspace / "two").tobytes() == _arr(single).tobytes()
    assert (workspace / "two" / "samples.npz").read_bytes() == (single / "samples.npz").read_bytes()


@pytest.mark.slow
def test_a_killed_run_continues_to_the_same_bytes(workspace, single):
    out = workspace / "killed"
    cmd = [*SPHERE, "sample", "--n", str(N), "--batch-size", str(BATCH), "--out", str(out)]
    kill_when(cmd, (out / "chunks" / "chunk-000000.npz").exists, cwd=workspace, env=ENV)
    assert not (out / "samples.npz").exists(), "the run ended before it could be killed"
    kept = len(list((out / "chunks").glob("chunk-*.npz")))
    done = _sample(workspace, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{kept} reused" in done.stdout
    assert _arr(out).tobytes() == _arr(single).tobytes()


@pytest.mark.slow
def test_other_settings_into_the_same_folder_are_refused(workspace, single):
    before = (single / "samples.npz").read_bytes()
    done = _sample(workspace, "--cfg", "2", "--seed", "1", "--out", str(single))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "other settings" in lines[0], done.stderr
    assert re.search(r"cfg 6\.0 there, 2\.0 now; seed 0 there, 1 now", lines[0]), lines[0]
    assert (single / "samples.npz").read_bytes() == before


@pytest.mark.slow
def test_bf16_is_recorded_in_the_settings_and_the_folder_tag(workspace, single):
    done = _sample(workspace, "--precision", "bf16")
    assert done.returncode == 0, done.stderr[-3000:]
    out = workspace / "runs" / "new" / "samples" / f"{TAG}-bf16"
    assert json.loads((out / SETTINGS).read_text())["precision"] == "bf16"
    assert json.loads((single / SETTINGS).read_text())["precision"] == "fp32"
    assert _arr(out).shape == _arr(single).shape


def test_quantisation_is_the_authors_truncating_clamp():
    x = torch.tensor([-2.0, -1.0, -0.003, 0.0, 0.003, 0.5, 1.0, 2.0]).view(1, 1, 1, 8)
    out = to_uint8(x.expand(1, 3, 1, 8))
    assert out.shape == (1, 1, 8, 3)
    assert out[0, 0, :, 0].tolist() == [0, 0, 127, 128, 128, 191, 255, 255]


def test_a_folder_sampled_before_the_temperature_setting_resumes_at_temperature_1(tmp_path):
    saved = {"n": 10, "cfg": 6.0, "steps": 2}  # what settings.json held before the option
    check_settings(tmp_path, saved, {**saved, "temperature": 1.0})
    with pytest.raises(SampleError, match="temperature"):
        check_settings(tmp_path, saved, {**saved, "temperature": 0.7})


def test_a_folder_sampled_before_the_class_option_resumes_with_every_class(tmp_path):
    saved = {"n": 10, "cfg": 6.0, "labels": "balanced"}
    check_settings(tmp_path, saved, {**saved, "only_class": None})
    with pytest.raises(SampleError, match="only_class"):
        check_settings(tmp_path, saved, {**saved, "only_class": 3})
