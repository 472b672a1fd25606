"""train-ar on CPU: 2 ranks equal 1, exact resume after SIGKILL, guards."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spherear.checkpoints import save_pretrained
from spherear.config import load_recipe, save_recipe
from spherear.data.latent_cache import cache_latents
from spherear.data.prepare import prepare_dataset
from spherear.models import build_vae
from spherear.train.loop import read_metrics

from ..conftest import kill_when

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
STEPS = 8


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
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


def _train(root: Path, out: str, *extra: str, launcher=(sys.executable, "-m", "spherear")):
    cmd = [*launcher, "train-ar", "--recipe", str(root / "recipe.toml"),
           "--set", f"run.output_dir={root / out}", *extra]  # fmt: skip
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True)


def _losses(run: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(run) if "loss" in m}


@pytest.fixture(scope="module")
def straight(workspace):
    done = _train(workspace, "straight")
    assert done.returncode == 0, done.stderr[-3000:]
    return workspace / "straight"


def test_two_ranks_equal_one_process(workspace, straight):
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "--module", "spherear")  # fmt: skip
    done = _train(workspace, "two", launcher=torchrun)
    assert done.returncode == 0, done.stderr[-3000:]
    checksums = read_metrics(workspace / "two")[-1]["weights_checksum_per_rank"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]  # 2 ranks, same weights
    one, two = _losses(straight), _losses(workspace / "two")
    assert list(one) == list(range(1, STEPS + 1)) == list(two)
    for step in one:
        assert abs(one[step] - two[step]) <= 1e-5, (step, one[step], two[step])
    a = load_file(straight / "export" / "ar_raw.safetensors")
    b = load_file(workspace / "two" / "export" / "ar_raw.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


def test_sigkill_and_resume_is_exact(workspace, straight):
    run = workspace / "killed"
    cmd = [sys.executable, "-m", "spherear", "train-ar", "--recipe",
           str(workspace / "recipe.toml"), "--set", f"run.output_dir={run}"]  # fmt: skip
    kill_when(cmd, (run / "checkpoints" / "step-00000004").exists, env=ENV)
    assert not (run / "export").exists(), "the run ended before it could be killed"
    done = _train(workspace, "killed")
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("ar.safetensors", "ar_raw.safetensors"):  # EMA and raw weights
        a, b = load_file(straight / "export" / name), load_file(run / "export" / name)
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    one, two = _losses(straight), _losses(run)
    assert [two[s] for s in range(5, STEPS + 1)] == [one[s] for s in range(5, STEPS + 1)]
    assert sorted(two) == list(range(1, STEPS + 1))


def test_a_diverging_run_stops_and_keeps_its_checkpoint(workspace, straight):
    done = _train(workspace, "nan", "--set", "train.lr=1e9", "--set", "train.warmup_steps=0",
                  "--set", "train.checkpoint_every=1")  # fmt: skip
    assert done.returncode == 2
    assert "training stopped and the last good checkpoint" in done.stderr
    assert "Traceback" not in done.stderr
    kept = sorted((workspace / "nan" / "checkpoints").glob("step-*"))
    assert kept, "no checkpoint survived"
    state = load_file(kept[-1] / "model.safetensors")  # the checkpoint still reads
    assert set(state) == set(load_file(straight / "export" / "ar_raw.safetensors"))
    assert not (workspace / "nan" / "export").exists()
    again = _train(workspace, "nan", "--set", "train.lr=1e9", "--set", "train.warmup_steps=0")
    assert again.returncode == 2 and f"the last good checkpoint, {kept[-1]}" in again.stderr


def test_resuming_with_another_size_is_refused(workspace, straight):
    done = _train(workspace, "straight", "--set", "ar.depth=3")
    assert done.returncode == 2 and "another architecture" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_cache_without_the_recipes_views_is_refused(workspace):
    done = _train(workspace, "unflipped", "--set", "augment.hflip=false")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    expected = "holds the views ['center', 'center_flip'], but this recipe's augment.hflip = false"
    assert expected in done.stderr and "ask for ['center']" in done.stderr
    assert not (workspace / "unflipped").exists()


@pytest.mark.parametrize("inputs", ["latents", "images"])
def test_a_micro_batch_equals_its_samples_drawn_one_by_one(workspace, inputs):
    """Batching the draws must not change them: each generator draws the view, the
    posterior sample (latents only), class dropout, t and noise, in this order."""
    import numpy as np

    from spherear.data.latent_cache import LatentDataset
    from spherear.data.prepare import PreparedImages
    from spherear.data.transforms import to_tensor, train_view
    from spherear.models.power_spherical import PowerSpherical
    from spherear.train.ar import MicroBatches
    from spherear.train.loop import BatchPlan

    recipe = load_recipe(workspace / "recipe.toml", [f"train.inputs={inputs}"])
    vae, ar, aug = recipe.vae, recipe.ar, recipe.augment
    source = PreparedImages(workspace / "data") if inputs == "images" else LatentDataset(
        workspace / "latents")  # fmt: skip
    batches = MicroBatches(recipe, source, BatchPlan.make(recipe.train, 1), 0, 0, STEPS)
    indices, seeds = [5, 0, 39, 5], [11, 12, 13, 14]
    batch = batches.make_batch(indices, seeds, epoch=0.5)
    for j, (index, seed) in enumerate(zip(indices, seeds, strict=True)):
        g = torch.Generator().manual_seed(seed)
        if inputs == "images":
            image, label = source[index]
            decay = (aug.crop_decay_start_epoch, aug.crop_decay_end_epoch)
            rng = np.random.default_rng(seed)
            x = to_tensor(train_view(image, vae.resolution, 0.5, rng, aug.random_crop_min,
                                     aug.hflip, decay))  # fmt: skip
        else:
            view = int(torch.randint(source.num_views, (), generator=g))
            mu, kappa, label = source.posterior(index, view)
            x = PowerSpherical(mu, kappa).sample(g) * 4.0
        assert torch.equal(batch["x"][j], x) and batch["label"][j] == label
        assert batch["drop"][j] == (torch.rand((), generator=g) < ar.class_dropout)
        assert torch.equal(batch["t"][j], torch.sigmoid(torch.randn(4, 64, generator=g)))
        assert torch.equal(batch["noise"][j], torch.randn(4, 64, 16, generator=g))


def test_training_on_images_encoded_on_the_fly_runs(workspace):
    done = _train(workspace, "images", "--set", "train.inputs=images", "--set", "train.max_steps=2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert [m["step"] for m in read_metrics(workspace / "images") if "loss" in m] == [1, 2]
