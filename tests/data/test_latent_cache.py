"""cache-latents: resumable after SIGKILL, independent of the process count, and a loader
that samples the posterior afresh on every visit."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spherear.checkpoints import save_pretrained
from spherear.config import save_recipe
from spherear.data.latent_cache import (
    CacheError,
    LatentDataset,
    cache_latents,
    make_views,
    read_manifest,
    view_names,
)
from spherear.data.prepare import PreparedImages, prepare_dataset
from spherear.data.synthetic import render
from spherear.data.transforms import random_crop, to_tensor
from spherear.models import build_vae
from spherear.models.power_spherical import PowerSpherical

from ..conftest import kill_when

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: bit-identical runs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from spherear.config import load_recipe

    root = tmp_path_factory.mktemp("cache")
    recipe = load_recipe(
        Path(__file__).resolve().parents[2] / "recipes" / "tiny.toml",
        ["vae.channels=[8, 16, 16]", "vae.latent_dim=16", "vae.num_heads=2",
         "vae.encoder_depth=1", "vae.decoder_depth=1", "cache.shard_size=6", "cache.batch_size=4",
         "cache.random_crops=1", "augment.hflip=true"],
    )  # fmt: skip
    torch.manual_seed(0)
    vae = build_vae(recipe)
    save_pretrained(root / "vae", recipe, vae)
    save_recipe(recipe, root)
    prepare_dataset("synthetic", root / "data", resolution=32, num_images=40, progress=False)
    return root, recipe


def _cli(root: Path, out: Path, launcher=(sys.executable, "-m", "spherear")):
    paths = ["--recipe", root / "recipe.toml", "--vae", root / "vae", "--data", root / "data"]
    return [*launcher, "cache-latents", *map(str, paths), "--out", str(out)]


def _shards(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.safetensors"))}


@pytest.fixture(scope="module")
def reference(setup):
    root, _ = setup
    out = root / "reference"
    done = subprocess.run(_cli(root, out), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "cached 40 images x 3 views (center, center_flip, random_0)" in done.stdout
    return out


@pytest.mark.slow
def test_sigkill_then_rerun_equals_an_uninterrupted_run(setup, reference):
    root, _ = setup
    out = root / "killed"
    kill_when(_cli(root, out), lambda: any(out.glob("shard-*.safetensors")), env=ENV)
    assert not (out / "manifest.json").exists(), "the run finished before it could be killed"
    assert 0 < len(_shards(out)) < 7
    rerun = subprocess.run(_cli(root, out), env=ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert _shards(out) == _shards(reference) and len(_shards(out)) == 7
    assert not list(out.glob(".shard-*"))


@pytest.mark.slow
def test_two_processes_equal_one(setup, reference):
    root, _ = setup
    out = root / "two"
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "--module", "spherear")  # fmt: skip
    done = subprocess.run(_cli(root, out, torchrun), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_manifest(out)["num_processes"] == 2
    assert _shards(out) == _shards(reference)


def test_loader_samples_lie_on_the_sphere_and_point_along_mu(reference):
    data = LatentDataset(reference)
    assert len(data) == 40 and data.num_views == 3
    tokens, label = data[7]
    assert tokens.shape == (64, 16) and label == 7 % 10
    torch.testing.assert_close(tokens.norm(dim=-1), torch.full((64,), 4.0))
    torch.manual_seed(0)
    views = [int(torch.randint(3, ())) for _ in range(300)]
    assert set(views) == {0, 1, 2}
    # with the view pinned, the mean of many loader draws is E[z] = mean_cosine * mu
    data.num_views = 1
    params, _ = data.posterior(7, 0)
    mu, kappa = params["mu"], params["kappa"]
    n = 3000
    mean = torch.stack([data[7][0] / 4.0 for _ in range(n)]).mean(0)
    along = (mean * mu).sum(-1)
    expected = PowerSpherical(mu, kappa).mean_cosine
    assert (along - expected).abs().max() < 5 / n**0.5
    assert (mean - along[:, None] * mu).norm(dim=-1).max() < 5 / n**0.5


def test_views_are_the_centre_crop_and_its_flip(setup, reference):
    data = LatentDataset(reference)
    centre = data.posterior(3, 0)[0]["mu"]
    flip = data.posterior(3, 1)[0]["mu"]
    assert not torch.equal(centre, flip)


def test_a_cache_of_another_vae_is_refused(setup, reference):
    root, recipe = setup
    torch.manual_seed(1)  # other weights: the cache is tied to the VAE's content hash
    other = build_vae(recipe)
    save_pretrained(root / "other_vae", recipe, other)
    with pytest.raises(CacheError, match="other settings"):
        cache_latents(recipe, other, root / "other_vae", root / "data", reference, progress=False)


def test_a_batch_of_draws_equals_the_draws_one_by_one(reference):
    data = LatentDataset(reference)
    indices, seeds = [3, 17, 3, 39], [5, 6, 7, 8]
    tokens, labels = data.draw_batch(indices, [torch.Generator().manual_seed(s) for s in seeds])
    for j, (i, s) in enumerate(zip(indices, seeds, strict=True)):
        alone, label = data.draw(i, torch.Generator().manual_seed(s))
        assert torch.equal(tokens[j], alone) and labels[j] == label


def mirrored(image: Image.Image) -> Image.Image:
    return image.transpose(Image.FLIP_LEFT_RIGHT)


def test_without_hflip_no_view_is_mirrored(setup):
    _, recipe = setup
    image = Image.fromarray(render(0, 8, 40)[0])
    no_flip = replace(recipe, augment=replace(recipe.augment, hflip=False))
    assert view_names(recipe) == ["center", "center_flip", "random_0"]
    assert view_names(no_flip) == ["center", "random_0"]
    with_flips, without = make_views(image, 8, recipe), make_views(image, 8, no_flip)
    assert len(without) == 2 and without[0].tobytes() == with_flips[0].tobytes()
    assert mirrored(with_flips[1]).tobytes() == with_flips[0].tobytes()
    # the same crop either way, never mirrored without hflip
    rng = np.random.default_rng([recipe.cache.seed, 8, 0])
    crop = random_crop(image, recipe.vae.resolution, recipe.augment.random_crop_min, rng)
    assert without[1].tobytes() == crop.tobytes()
    assert with_flips[2].tobytes() in (crop.tobytes(), mirrored(crop).tobytes())


def test_a_gaussian_vae_caches_mean_and_logvar_and_the_loader_draws_from_them(setup, tmp_path):
    root, recipe = setup
    recipe = replace(recipe, vae=replace(recipe.vae, posterior="gaussian"))
    torch.manual_seed(0)
    vae = build_vae(recipe)
    save_pretrained(tmp_path / "vae", recipe, vae)
    manifest = cache_latents(recipe, vae, tmp_path / "vae", root / "data", tmp_path / "cache",
                             progress=False)  # fmt: skip
    # mean and log-variance in fp32: 8 bytes per number, 16 numbers per token
    assert manifest["bytes_per_view"] == recipe.vae.num_tokens * 8 * 16
    data = LatentDataset(tmp_path / "cache")
    params, label = data.posterior(5, 0)
    assert set(params) == {"mean", "logvar"} and label == 5 % 10
    centre = make_views(PreparedImages(root / "data")[5][0], 5, recipe)[0]
    with torch.no_grad():
        expected = vae.encode(to_tensor(centre)[None])
    torch.testing.assert_close(params["mean"], expected.mean[0], atol=1e-5, rtol=1e-5)
    g = torch.Generator().manual_seed(3)
    view = int(torch.randint(data.num_views, (), generator=g))
    eps = torch.randn((recipe.vae.num_tokens, 16), generator=g)
    params, _ = data.posterior(5, view)
    latents, _ = data.draw_batch([5], [torch.Generator().manual_seed(3)])
    torch.testing.assert_close(latents[0], params["mean"] + torch.exp(0.5 * params["logvar"]) * eps)
    assert 0 < data.latent_std() < 10
    # train-ar measures the scale that gives the raw tokens of those images unit spread
    from spherear.models.token_space import latents_to_tokens
    from spherear.train.ar_inputs import with_latent_scale

    scaled = with_latent_scale(replace(recipe, ar=replace(recipe.ar, token_space="raw")), data)
    generators = [torch.Generator().manual_seed(i) for i in range(len(data))]
    latents, _ = data.draw_batch(list(range(len(data))), generators)
    tokens = latents_to_tokens(latents, scaled.vae, scaled.ar)
    assert abs(float(tokens.double().std()) - 1) < 1e-5
    sphere = latents_to_tokens(latents, scaled.vae, replace(scaled.ar, token_space="sphere"))
    torch.testing.assert_close(sphere.norm(dim=-1), torch.full(sphere.shape[:2], 4.0))
