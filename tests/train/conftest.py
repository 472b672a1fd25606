import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spherear.checkpoints import save_pretrained
from spherear.config import load_recipe, save_recipe
from spherear.data.latent_cache import cache_latents
from spherear.data.prepare import prepare_dataset
from spherear.models import build_vae
from spherear.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
STEPS = 8
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SPHEREAR = (sys.executable, "-m", "spherear")
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", "2", "--module", "spherear")  # fmt: skip


@pytest.fixture(scope="session")
def ar_workspace(tmp_path_factory):
    """A prepared dataset, a random S-VAE export and its latent cache, and the recipe that
    trains on them (``recipe.toml``)."""
    root = tmp_path_factory.mktemp("train_ar")
    recipe = load_recipe(
        ROOT / "recipes" / "tiny.toml",
        ["vae.channels=[8, 16, 16]", "vae.latent_dim=16", "vae.num_heads=2", "vae.encoder_depth=1",
         "vae.decoder_depth=1", "ar.depth=2", "ar.num_heads=2", "ar.width=32",
         "ar.head_depth=2", "ar.head_width=32", "ar.head_groups=1", "ar.diff_batch_mul=4",
         f"data.prepared={root / 'data'}", f"data.latents={root / 'latents'}",
         f"train.vae_checkpoint={root / 'vae'}", "train.global_batch_size=8",
         "train.micro_batch_size=4", f"train.max_steps={STEPS}", "train.warmup_steps=2",
         "train.log_every=1", "train.checkpoint_every=4", "train.num_workers=0",
         "train.sample_every=0", "sample.steps=2", "train.ema_decay=0.9",
         "augment.hflip=true"],  # two cached views, so the draws pick one
    )  # fmt: skip
    torch.manual_seed(0)
    vae = build_vae(recipe)
    save_pretrained(root / "vae", recipe, vae)
    prepare_dataset("synthetic", root / "data", resolution=32, num_images=40, progress=False)
    cache_latents(recipe, vae, root / "vae", root / "data", root / "latents", progress=False)
    save_recipe(recipe, root)
    return root


def train(root: Path, out: str, *extra: str, launcher=SPHEREAR) -> subprocess.CompletedProcess:
    """train-ar of ``ar_workspace``'s recipe into ``root / out``, in processes of its own."""
    cmd = [*launcher, "train-ar", "--recipe", str(root / "recipe.toml"),
           "--set", f"run.output_dir={root / out}", *extra]  # fmt: skip
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True)


def largest_difference(a: dict, b: dict) -> float:
    """The largest elementwise distance between two state dicts of the same keys."""
    assert set(a) == set(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


def losses(run: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(run) if "loss" in m}


@pytest.fixture(scope="session")
def straight(ar_workspace):
    """The reference: ``ar_workspace``'s recipe trained in one process, fp32, eager."""
    done = train(ar_workspace, "straight")
    assert done.returncode == 0, done.stderr[-3000:]
    return ar_workspace / "straight"
