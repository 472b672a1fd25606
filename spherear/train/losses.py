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
from spherear.files import load_torch_file

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


def vgg_features(cfg: VAELossConfig) -> tuple[Path, dict[str, torch.Tensor]] | None:
    """The VGG16 ``features.*`` weights LPIPS needs and their file, read (no code in the file
    can run) and checked before training starts; None for the random backbone of tests."""
    if cfg.perceptual_random:
        return None
    path = _vgg_weights(cfg)
    state = load_torch_file(path, what="VGG16 weights file (vae_loss.perceptual_weights)")
    features = {
        k[len("features.") :]: v
        for k, v in (state.items() if isinstance(state, dict) else [])
        if k.startswith("features.") and isinstance(v, torch.Tensor)
    }
    if not features:
        raise SpherearError(f"{_not_vgg(path)} (it has no 'features.*' tensors)")
    return path, features


def _not_vgg(path: Path) -> str:
    return (
        f"{path}: not torchvision's VGG16 weights; use {VGG16_FILE} (vae_loss.perceptual_weights)"
    )


def perceptual_loss(vgg: tuple[Path, dict[str, torch.Tensor]] | None) -> nn.Module:
    """LPIPS with the VGG backbone (its calibrated linear heads ship with the lpips
    package); the backbone's weights are ``vgg_features``, from a local file, never a
    download (None: a random backbone, for tests only)."""
    import lpips

    with warnings.catch_warnings():  # lpips builds the VGG with torchvision's old API
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    if vgg is not None:
        path, features = vgg
        for stage in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4,
                      model.net.slice5):  # fmt: skip
            # lpips names each layer by its index in torchvision's vgg16().features
            try:
                stage.load_state_dict(
                    {k: v for k, v in features.items() if k.split(".")[0] in stage._modules}
                )
            except RuntimeError as e:
                why = " ".join(str(e).split())[:120]
                raise SpherearError(f"{_not_vgg(path)} ({why})") from None
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
