"""train-vae on CPU: exact resume after SIGKILL, with the discriminator switched on."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from spherear.config import load_recipe, save_recipe
from spherear.data.prepare import prepare_dataset
from spherear.train.metrics import read_metrics

from ..conftest import kill_when

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
STEPS = 8
# train-vae in processes of its own
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_vae")
    recipe = load_recipe(
        ROOT / "recipes" / "tiny.toml",
        ["vae.channels=[8, 16, 16]", "vae.latent_dim=16", "vae.num_heads=2", "vae.encoder_depth=1",
         "vae.decoder_depth=1", f"data.prepared={root / 'data'}",
         "vae_loss.perceptual_random=true", "vae_loss.disc_start=3",
         "vae_loss.disc_channels=8", "vae_loss.initial_code=pca", "train.global_batch_size=8",
         "train.micro_batch_size=4",
         f"train.max_steps={STEPS}", "train.warmup_steps=0", "train.log_every=1",
         "train.checkpoint_every=4", "train.num_workers=0", "train.sample_every=0"],
    )  # fmt: skip
    prepare_dataset("synthetic", root / "data", resolution=32, num_images=48, progress=False)
    save_recipe(recipe, root)
    return root


def _cmd(root: Path, out: str) -> list[str]:
    return [sys.executable, "-m", "spherear", "train-vae", "--recipe", str(root / "recipe.toml"),
            "--set", f"run.output_dir={root / out}"]  # fmt: skip


def test_sigkill_and_resume_is_exact(workspace):
    straight = subprocess.run(_cmd(workspace, "straight"), env=ENV, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-3000:]
    run = workspace / "killed"
    kill_when(_cmd(workspace, "killed"), (run / "checkpoints" / "step-00000004").exists, env=ENV)
    assert not (run / "export").exists(), "the run ended before it could be killed"
    resumed = subprocess.run(_cmd(workspace, "killed"), env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(workspace / "straight" / "export" / "vae.safetensors")
    b = load_file(run / "export" / "vae.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6

    def losses(folder):
        return {m["step"]: (m["loss"], m.get("d")) for m in read_metrics(folder) if "loss" in m}

    one, two = losses(workspace / "straight"), losses(run)
    assert [two[s] for s in range(5, STEPS + 1)] == [one[s] for s in range(5, STEPS + 1)]
    assert one[STEPS][1] is not None  # the discriminator trained in the checked steps
    psnr = [m["held_out_psnr"] for m in read_metrics(run) if "held_out_psnr" in m]
    assert psnr and (run / "reconstructions" / f"step-{STEPS:08d}.png").is_file()


def test_missing_vgg_weights_is_one_line(workspace):
    out = subprocess.run(
        [*_cmd(workspace, "novgg"), "--set", "vae_loss.perceptual_random=false"],
        env={**ENV, "TORCH_HOME": str(workspace / "empty_torch_home")},
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 2 and "vgg16-397923af.pth" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_pca_code_the_vae_cannot_hold_is_one_line(workspace):
    out = subprocess.run([*_cmd(workspace, "nocode"), "--set", "vae.patch_shortcut=false"],
                         env=ENV, capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "fits the patch shortcut: set vae.patch_shortcut = true" in out.stderr
    assert not (workspace / "nocode").exists()
