"""The S-VAE's training losses: hinge losses worked out by hand, the PatchGAN's one logit per
patch, and the VGG weights checked before any training."""

import pytest
import torch

from spherear.config import VAELossConfig
from spherear.errors import SpherearError
from spherear.train.losses import PatchDiscriminator, hinge_d_loss, hinge_g_loss, vgg_features


def test_hinge_losses():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 1.0])
    # real: relu(1 - 2) = 0, relu(1 - 0) = 1; fake: relu(1 - 2) = 0, relu(1 + 1) = 2
    assert hinge_d_loss(real, fake).item() == 0.5 * (0.5 + 1.0)
    assert hinge_g_loss(fake).item() == 0.5


def test_patch_discriminator_gives_one_logit_per_patch():
    disc = PatchDiscriminator(layers=2, channels=8)
    # 32 -> 16 -> 8 (stride 2), -> 7 -> 6 (4x4 kernels, stride 1, padding 1)
    assert disc(torch.zeros(3, 3, 32, 32)).shape == (3, 1, 6, 6)
    convs = [m for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(abs(c.weight.std().item() - 0.02) < 0.01 for c in convs)  # N(0, 0.02) init


def test_vgg_weights_are_checked_before_training(tmp_path):
    missing = VAELossConfig(perceptual_weights=str(tmp_path / "vgg.pth"))
    with pytest.raises(SpherearError, match="vae_loss.perceptual_weights: no file at"):
        vgg_features(missing)
    torch.save({"classifier.0.weight": torch.zeros(2, 2)}, tmp_path / "vgg.pth")
    with pytest.raises(SpherearError, match="not torchvision's VGG16 weights.*no 'features"):
        vgg_features(missing)
    assert vgg_features(VAELossConfig(perceptual_random=True)) is None
