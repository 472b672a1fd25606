import dataclasses
import math
import re

import numpy as np
import pytest
import torch

from spherear.config import RecipeError, VAEConfig, load_recipe
from spherear.data.synthetic import render
from spherear.models.vae import SphericalVAE, check_patch_code

from ..conftest import ROOT


def test_encode_decode_shapes_and_sphere(tiny_recipe):
    vae = SphericalVAE(tiny_recipe.vae)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    posterior = vae.encode(images)
    n = tiny_recipe.vae.num_tokens
    assert posterior.mu.shape == (2, n, 16) and posterior.kappa.shape == (2, n)
    torch.testing.assert_close(posterior.mu.norm(dim=-1), torch.ones(2, n))
    assert (posterior.kappa >= 1).all()
    for z in (posterior.sample(), posterior.mode()):
        torch.testing.assert_close(z.norm(dim=-1), torch.full((2, n), math.sqrt(16)))
    recon = vae.decode(posterior.sample())
    assert recon.shape == images.shape
    assert posterior.kl().shape == (2, n) and (posterior.kl() >= 0).all()


def test_resolution_stages_and_depths_are_configurable():
    cfg = VAEConfig(
        resolution=48, latent_dim=8, channels=(8, 16, 16, 32), num_heads=2,
        encoder_depth=1, decoder_depth=3, num_registers=2,
    )  # fmt: skip
    vae = SphericalVAE(cfg)
    assert cfg.patch_size == 8 and cfg.grid_size == 6
    assert len(vae.encoder.down) == 3 and len(vae.decoder.layers) == 3
    recon, posterior = vae(torch.zeros(1, 3, 48, 48))
    assert recon.shape == (1, 3, 48, 48) and posterior.mu.shape == (1, 36, 8)


def test_gradients_reach_the_encoder_through_the_sample(tiny_recipe):
    vae = SphericalVAE(tiny_recipe.vae)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    recon, posterior = vae(images)
    ((recon - images).abs().mean() + 0.004 * posterior.kl().mean()).backward()
    assert vae.encoder.conv_in.weight.grad.abs().sum() > 0
    assert vae.quant_proj.weight.grad.abs().sum() > 0


def test_posterior_is_fp32_under_bf16_autocast(tiny_recipe):
    vae = SphericalVAE(tiny_recipe.vae)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        posterior = vae.encode(torch.rand(1, 3, 32, 32))
        z = posterior.sample()
        recon = vae.decode(z)
    assert posterior.mu.dtype == posterior.kappa.dtype == z.dtype == torch.float32
    assert recon.dtype == torch.bfloat16 and torch.isfinite(recon.float()).all()


def test_init_kappa_starts_the_posteriors_at_that_concentration(tiny_recipe):
    vae = SphericalVAE(tiny_recipe.vae)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert vae.encode(x).kappa.median() < 3  # the default init: nearly uniform
    for target in (200.0, 5000.0):
        vae.init_kappa(target)
        kappa = vae.encode(x).kappa
        assert torch.allclose(kappa, torch.full_like(kappa, target), rtol=0.01)


def test_patch_shortcut_is_off_by_default_and_adds_only_two_linear_maps(tiny_recipe):
    assert not VAEConfig().patch_shortcut
    plain = SphericalVAE(dataclasses.replace(tiny_recipe.vae, patch_shortcut=False))
    cfg = dataclasses.replace(tiny_recipe.vae, patch_shortcut=True)
    shortcut = SphericalVAE(cfg)
    added = set(shortcut.state_dict()) - set(plain.state_dict())
    assert added == {f"{part}.{p}" for part in ("encoder.patch_in", "decoder.patch_out")
                     for p in ("weight", "bias")}  # fmt: skip
    p = cfg.patch_size
    assert shortcut.encoder.patch_in.weight.shape == (cfg.width, 3, p, p)


def _synthetic(n: int) -> torch.Tensor:
    return torch.stack([
        torch.from_numpy(render(0, i, 32)[0]).permute(2, 0, 1).float() / 127.5 - 1
        for i in range(n)
    ])  # fmt: skip


def _fit(cfg: VAEConfig, images: torch.Tensor, steps: int, pca: bool = False) -> float:
    """Held-out L1 after ``steps`` Adam steps on the first images (the last 8 held out),
    from the default init or (``pca``) the patch code of the training images."""
    torch.manual_seed(0)
    vae = SphericalVAE(cfg)
    vae.init_kappa(1000.0)
    if pca:
        vae.init_patch_code(images[:-8])
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    train, held_out = images[:-8], images[-8:]
    for step in range(steps):
        x = train[step * 8 % len(train) :][:8]
        recon, _ = vae(x)
        (recon - x).abs().mean().backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        return (vae.decode(vae.encode(held_out).mode()) - held_out).abs().mean().item()


def test_patch_shortcut_learns_textures_faster(tiny_recipe):
    """Why the tiny recipes switch it on: on the synthetic classes (stripes, checkerboards
    and dots among them) the convs alone need many steps, and a linear patch code of each
    token's pixels holds most of an image at once."""
    images = _synthetic(72)
    cfg = dataclasses.replace(tiny_recipe.vae, encoder_depth=0, decoder_depth=0,
                              patch_shortcut=False)  # fmt: skip
    plain = _fit(cfg, images, 40)
    shortcut = _fit(dataclasses.replace(cfg, patch_shortcut=True), images, 40)
    assert shortcut < 0.8 * plain, (shortcut, plain)
    # and starting from the patches' principal components (what the tiny recipe does) is
    # better still: the shortcut need not find the linear code first
    pca = _fit(dataclasses.replace(cfg, patch_shortcut=True), images, 40, pca=True)
    assert pca < 0.8 * shortcut, (pca, shortcut)


def _patches(images: torch.Tensor, p: int) -> np.ndarray:
    """(B * tokens, 3 p p) pixel patches in raster order, by plain reshapes."""
    x = images.double().numpy()
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, c * p * p)


def test_patch_code_is_the_principal_coordinates_and_a_least_squares_decoder(tiny_recipe):
    cfg = tiny_recipe.vae
    d, p = cfg.latent_dim, cfg.patch_size
    images = _synthetic(60)
    torch.manual_seed(0)
    vae = SphericalVAE(cfg)
    vae.init_kappa(3000.0)
    vae.init_patch_code(images)
    with torch.no_grad():
        posterior = vae.encode(images)
        recon = vae.decode(posterior.mode())
    kappa = posterior.kappa
    assert torch.allclose(kappa, torch.full_like(kappa, 3000.0), rtol=0.01)

    # the code, off the sphere (the last coordinate is the constant), spans exactly the
    # top d - 1 principal directions of the patches (numpy's SVD)
    patches = _patches(images, p)
    centred = patches - patches.mean(0)
    basis = np.linalg.svd(centred, full_matrices=False)[2][: d - 1]
    mu = posterior.mu.double().reshape(-1, d).numpy()
    coords = mu[:, :-1] / mu[:, -1:]
    target = centred @ basis.T
    fit = np.linalg.lstsq(coords, target, rcond=None)[0]
    assert np.abs(coords @ fit - target).max() < 1e-4 * np.abs(target).max()
    assert np.linalg.matrix_rank(coords, tol=1e-6) == d - 1

    # the decoder starts as the linear map from the code: as close to the patches as the
    # least-squares affine map, which has one intercept per pixel where ours has one per channel
    z = posterior.mode().double().reshape(-1, d).numpy()
    design = np.concatenate([z, np.ones((len(z), 1))], 1)
    best = design @ np.linalg.lstsq(design, patches, rcond=None)[0]
    ours = _patches(recon, p)
    assert np.square(ours - patches).mean() <= 1.02 * np.square(best - patches).mean()
    assert np.abs(ours - design @ np.linalg.lstsq(design, ours, rcond=None)[0]).max() < 1e-4


PATCH_CODE_LIMITS = [
    ({"patch_shortcut": False}, "fits the patch shortcut: set vae.patch_shortcut = true"),
    ({"latent_dim": 50}, "latent_dim 50 is more than one above the 48 numbers of a 4x4 RGB"),
    ({"latent_dim": 16, "channels": (8, 16, 8)},
     "latent_dim 16 exceeds the width 8 (the last of vae.channels)"),
]  # fmt: skip


@pytest.mark.parametrize("change, message", PATCH_CODE_LIMITS)
def test_a_pca_code_the_vae_cannot_hold_is_refused_naming_the_key(change, message):
    vae = load_recipe(ROOT / "recipes" / "tiny_vae.toml").vae
    check_patch_code(vae)  # the tiny S-VAE can hold it
    with pytest.raises(RecipeError, match=re.escape(message)):
        check_patch_code(dataclasses.replace(vae, **change))


@pytest.mark.parametrize("change, message", PATCH_CODE_LIMITS)
def test_init_patch_code_refuses_what_the_recipe_check_refuses(tiny_recipe, change, message):
    vae = SphericalVAE(dataclasses.replace(tiny_recipe.vae, **change))
    with pytest.raises(RecipeError, match=re.escape(message)):
        vae.init_patch_code(_synthetic(4))
