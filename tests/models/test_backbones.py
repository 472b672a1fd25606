"""The three VAE backbones: the same token grid, parameter counts within 20% of the
hybrid's at the tiny and the paper's size, and the posteriors each can carry."""

import dataclasses

import numpy as np
import pytest
import torch

from spherear.config import VAEConfig
from spherear.data.synthetic import render
from spherear.models.vae import ResBlock, SphericalVAE, replacement_blocks

PAPER = VAEConfig()  # the paper's 256px tokenizer
TINY = VAEConfig(resolution=32, latent_dim=32, channels=(32, 64, 128), num_heads=4,
                 encoder_depth=1, decoder_depth=2, num_registers=0)  # fmt: skip


def count(cfg: VAEConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in SphericalVAE(cfg).parameters())


def test_a_res_block_has_two_3x3_convs_and_two_group_norms():
    # by hand for 8 channels: 2 x (9 x 8 x 8) conv weights + 2 x (8 + 8) norm weights
    assert sum(p.numel() for p in ResBlock(8).parameters()) == 2 * 9 * 64 + 2 * 16


@pytest.mark.parametrize("base", [TINY, PAPER], ids=["tiny", "paper"])
@pytest.mark.parametrize("backbone", ["cnn", "vit"])
def test_pure_backbones_keep_the_hybrids_parameter_count_within_20_percent(base, backbone):
    hybrid = count(base)
    other = count(dataclasses.replace(base, backbone=backbone))
    assert abs(other - hybrid) / hybrid < 0.2, (backbone, other, hybrid)


def test_the_paper_sized_hybrid_has_the_papers_75m_parameters():
    assert 74e6 < count(PAPER) < 77e6  # spherear-facts.md: about 75.4M


def test_replacement_blocks_by_hand_for_the_paper_cnn():
    # a ViT block of width 512: 4 x 512^2 attention + 3 x 512 x 1536 SwiGLU + 2 x 512 norms
    # = 3,408,896; a res block: 2 x 9 x 512^2 + 4 x 512 = 4,720,640. The encoder's six
    # blocks and four registers: 20,455,424 -> 4.33 -> 4; the decoder's twelve: 8.67 -> 9
    blocks = replacement_blocks(dataclasses.replace(PAPER, backbone="cnn"))
    assert blocks == {"encoder": 4, "decoder": 9}


@pytest.mark.parametrize("backbone", ["hybrid", "cnn", "vit"])
@pytest.mark.parametrize("posterior", ["power_spherical", "gaussian"])
def test_every_backbone_and_posterior_gives_the_same_token_grid(backbone, posterior):
    cfg = dataclasses.replace(TINY, channels=(8, 16, 32), backbone=backbone, posterior=posterior,
                              latent_dim=8, patch_shortcut=True)  # fmt: skip
    vae = SphericalVAE(cfg)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    posterior_ = vae.encode(images)
    z = posterior_.sample()
    assert z.shape == (2, 64, 8)
    if posterior == "power_spherical":
        torch.testing.assert_close(z.norm(dim=-1), torch.full((2, 64), 8**0.5))
    assert vae.decode(z).shape == images.shape
    assert posterior_.kl().shape == (2, 64)


@pytest.mark.parametrize("posterior", ["power_spherical", "gaussian"])
def test_a_pca_code_starts_every_backbone_at_the_same_linear_code(posterior):
    """The conv and ViT paths start silent, so all three backbones reconstruct through the
    patch shortcut alone: the same images, and better than the mean patch."""
    pixels = [render(0, i, 32)[0] for i in range(16)]
    images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 127.5 - 1
    outputs = []
    for backbone in ("hybrid", "cnn", "vit"):
        cfg = dataclasses.replace(TINY, channels=(8, 16, 32), latent_dim=8, backbone=backbone,
                                  posterior=posterior, patch_shortcut=True)  # fmt: skip
        vae = SphericalVAE(cfg).eval()
        vae.init_patch_code(images)
        with torch.no_grad():
            outputs.append(vae.decode(vae.encode(images).mode()))
    for other in outputs[1:]:
        torch.testing.assert_close(other, outputs[0], atol=1e-4, rtol=1e-4)
    mean_patch = images.mean(0, keepdim=True)
    assert (outputs[0] - images).square().mean() < 0.8 * (mean_patch - images).square().mean()
