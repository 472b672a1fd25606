import dataclasses
import math

import torch

from spherear.config import VAEConfig
from spherear.data.synthetic import render
from spherear.models.vae import SphericalVAE


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


def _fit(cfg: VAEConfig, images: torch.Tensor, steps: int) -> float:
    """Held-out L1 after ``steps`` Adam steps on the first images (the last 8 held out)."""
    torch.manual_seed(0)
    vae = SphericalVAE(cfg)
    vae.init_kappa(1000.0)
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
    images = torch.stack([
        torch.from_numpy(render(0, i, 32)[0]).permute(2, 0, 1).float() / 127.5 - 1
        for i in range(72)
    ])  # fmt: skip
    cfg = dataclasses.replace(tiny_recipe.vae, encoder_depth=0, decoder_depth=0,
                              patch_shortcut=False)  # fmt: skip
    plain = _fit(cfg, images, 40)
    shortcut = _fit(dataclasses.replace(cfg, patch_shortcut=True), images, 40)
    assert shortcut < 0.8 * plain, (shortcut, plain)
