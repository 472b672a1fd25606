"""The S-VAE's training losses: LPIPS-VGG perceptual distance and a PatchGAN discriminator
with hinge losses."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from spherear.config import VAELossConfig
from spherear.errors import SpherearError

VGG16_FILE = "vgg16-397923af.pth"  # torchvision's name for the ImageNet VGG16 weights


def _vgg_weights(cfg: VAELossConfig) -> Path:
    if cfg.perceptual_weights:
        path = Path(cfg.perceptual_weights).expanduser()
        if not path.is_file():
            raise SpherearError(f"vae_loss.perceptual_weights: no file at {path}")
        return path
    path = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE
    if not path.is_file():
        raise SpherearError(
            f"LPIPS needs torchvision's VGG16 weights: put {VGG16_FILE} in {path.parent} or set "
            "vae_loss.perceptual_weights to its path (vae_loss.perceptual_random = true only "
            "for tests)"
        )
    return path


def perceptual_loss(cfg: VAELossConfig) -> nn.Module:
    """LPIPS with the VGG backbone (its calibrated linear heads ship with the lpips
    package); the backbone's weights come from a local file, never a download."""
    import lpips

    with warnings.catch_warnings():  # lpips builds the VGG with torchvision's old API
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    if not cfg.perceptual_random:
        state = torch.load(_vgg_weights(cfg), map_location="cpu", weights_only=True)
        features = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        for stage in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4,
                      model.net.slice5):  # fmt: skip
            # lpips names each layer by its index in torchvision's vgg16().features
            stage.load_state_dict(
                {k: v for k, v in features.items() if k.split(".")[0] in stage._modules}
            )
    return model.eval().requires_grad_(False)


class PatchDiscriminator(nn.Module):
    """PatchGAN: 4x4 convs with stride 2, ``layers`` times, then two stride-1 convs; one
    real/fake logit per patch."""

    def __init__(self, layers: int = 3, channels: int = 64):
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for n in range(1, layers + 1):
            stride = 2 if n < layers else 1
            out = channels * min(2**n, 8)
            seq += [nn.Conv2d(width, out, 4, stride, 1, bias=False), nn.BatchNorm2d(out),
                    nn.LeakyReLU(0.2)]  # fmt: skip
            width = out
        seq.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*seq)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()
