"""S-VAE: the hybrid CNN-ViT tokenizer with a power-spherical posterior.

Encoder: conv stem -> residual down blocks -> tokens -> registers + non-causal blocks ->
RMSNorm -> linear. ``quant_proj`` maps each token to a direction (latent_dim numbers,
l2-normalised) and a concentration. Decoder: the mirror image, fed with latents on the
sphere of radius sqrt(latent_dim).

``patch_shortcut`` (ours, off in the paper's models) adds a linear map from each token's
pixel patch to its features, and one from the decoder's input token back to its patch.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from spherear.config import RecipeError, VAEConfig
from spherear.models.power_spherical import PowerSpherical
from spherear.models.transformer import Block, RMSNorm, rope_table_2d


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4), channels, eps=1e-6)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class DownBlock(nn.Module):
    """Halves the resolution: GN-SiLU-conv(stride 2)-GN-SiLU-conv plus a 2x2 conv shortcut."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.block = nn.Sequential(
            group_norm(cin), nn.SiLU(), _conv3x3(cin, cout, 2),
            group_norm(cout), nn.SiLU(), _conv3x3(cout, cout),
        )  # fmt: skip
        self.shortcut = nn.Conv2d(cin, cout, 2, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + self.shortcut(x)


class UpBlock(nn.Module):
    """Doubles the resolution with a 4x4 transposed conv (2x2 transposed shortcut), then
    one more residual pair of 3x3 convs."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.block = nn.Sequential(
            group_norm(cin), nn.SiLU(), nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False),
            group_norm(cout), nn.SiLU(), _conv3x3(cout, cout),
        )  # fmt: skip
        self.shortcut = nn.ConvTranspose2d(cin, cout, 2, 2, bias=False)
        self.block2 = nn.Sequential(
            group_norm(cout), nn.SiLU(), _conv3x3(cout, cout),
            group_norm(cout), nn.SiLU(), _conv3x3(cout, cout),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(x) + self.shortcut(x)
        return x + self.block2(x)


class _RegisterTransformer(nn.Module):
    """Non-causal blocks over [registers, grid tokens]; returns the grid tokens only."""

    def __init__(self, cfg: VAEConfig, depth: int):
        super().__init__()
        self.num_registers = cfg.num_registers
        head_dim = cfg.width // cfg.num_heads
        # persistent: the authors' checkpoints carry this table, so loading them checks ours
        self.register_buffer("freqs_cis", rope_table_2d(cfg.grid_size, head_dim, cfg.num_registers))
        # none at all rather than an empty table: checkpoint files drop empty tensors
        self.register_token = (
            nn.Embedding(cfg.num_registers, cfg.width) if cfg.num_registers else None
        )
        self.layers = nn.ModuleList(Block(cfg.width, cfg.num_heads) for _ in range(depth))

    def run_blocks(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.register_token is None:
            x = tokens
        else:
            registers = self.register_token.weight.expand(tokens.shape[0], -1, -1)
            x = torch.cat([registers.to(tokens.dtype), tokens], dim=1)
        for layer in self.layers:
            x = layer(x, self.freqs_cis)
        return x[:, self.num_registers :]


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def _to_grid(tokens: torch.Tensor) -> torch.Tensor:
    B, N, C = tokens.shape
    side = math.isqrt(N)
    return tokens.transpose(1, 2).reshape(B, C, side, side)


class Encoder(_RegisterTransformer):
    def __init__(self, cfg: VAEConfig):
        super().__init__(cfg, cfg.encoder_depth)
        ch = cfg.channels
        self.conv_in = _conv3x3(3, ch[0])
        self.down = nn.ModuleList(DownBlock(ch[i], ch[i + 1]) for i in range(len(ch) - 1))
        self.norm = RMSNorm(cfg.width)
        self.output = nn.Linear(cfg.width, cfg.width, bias=False)
        p = cfg.patch_size
        self.patch_in = nn.Conv2d(3, cfg.width, p, p) if cfg.patch_shortcut else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(images)
        for block in self.down:
            x = block(x)
        features = self.output(self.norm(self.run_blocks(_to_tokens(x))))
        if self.patch_in is not None:
            features = features + _to_tokens(self.patch_in(images))
        return features


class Decoder(_RegisterTransformer):
    def __init__(self, cfg: VAEConfig):
        super().__init__(cfg, cfg.decoder_depth)
        ch = cfg.channels[::-1]
        self.conv_in = _conv3x3(cfg.width, cfg.width)
        self.up = nn.ModuleList(UpBlock(ch[i], ch[i + 1]) for i in range(len(ch) - 1))
        self.conv_out = nn.Sequential(group_norm(ch[-1]), nn.SiLU(), _conv3x3(ch[-1], 3))
        p = cfg.patch_size
        self.patch_out = nn.ConvTranspose2d(cfg.width, 3, p, p) if cfg.patch_shortcut else None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        grid = _to_grid(tokens)
        x = _to_grid(self.run_blocks(_to_tokens(self.conv_in(grid))))
        for block in self.up:
            x = block(x)
        image = self.conv_out(x)
        return image if self.patch_out is None else image + self.patch_out(grid)


def check_patch_code(cfg: VAEConfig) -> None:
    """What a patch code (``vae_loss.initial_code = "pca"``, ``init_patch_code``) needs of
    the S-VAE, as one-line errors naming the recipe key."""
    p = cfg.patch_size
    if not cfg.patch_shortcut:
        raise RecipeError('vae_loss.initial_code = "pca" fits the patch shortcut: set '
                          'vae.patch_shortcut = true (or initial_code = "random")')  # fmt: skip
    if cfg.latent_dim - 1 > 3 * p * p:
        raise RecipeError(
            f'vae_loss.initial_code = "pca": vae.latent_dim {cfg.latent_dim} is more than one '
            f"above the {3 * p * p} numbers of a {p}x{p} RGB patch; lower vae.latent_dim"
        )
    if cfg.latent_dim > cfg.width:
        raise RecipeError(
            f'vae_loss.initial_code = "pca": vae.latent_dim {cfg.latent_dim} exceeds the width '
            f"{cfg.width} (the last of vae.channels); lower vae.latent_dim or widen the VAE"
        )


class SphericalPosterior:
    """q(z | x) per token: power-spherical on the sphere of radius sqrt(latent_dim)."""

    def __init__(self, mu: torch.Tensor, kappa: torch.Tensor):
        self.mu, self.kappa = mu, kappa
        self.dist = PowerSpherical(mu, kappa)
        self.radius = math.sqrt(mu.shape[-1])

    def sample(self) -> torch.Tensor:
        return self.dist.rsample() * self.radius

    def mode(self) -> torch.Tensor:
        return self.dist.mu * self.radius

    def kl(self) -> torch.Tensor:
        """KL to the uniform distribution on the sphere, per token."""
        return self.dist.kl_to_uniform()


class SphericalVAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_proj = nn.Linear(cfg.width, cfg.latent_dim + 1)
        self.post_quant_proj = nn.Linear(cfg.latent_dim, cfg.width, bias=False)

    @torch.no_grad()
    def init_kappa(self, kappa: float) -> None:
        """Start every posterior near concentration ``kappa`` (> 1): the inverse of the
        softplus + 1 in ``encode``, put in the bias of the kappa output."""
        if kappa <= 1:
            raise ValueError(f"kappa must be above 1, got {kappa}")
        y = kappa - 1.0  # softplus^-1(y) = log(e^y - 1), written not to overflow
        self.quant_proj.bias[-1] = y + math.log(-math.expm1(-y))

    @torch.no_grad()
    def init_patch_code(self, images: torch.Tensor) -> None:
        """Start as a linear code of each token's pixel patch, fitted to ``images`` (B, 3, H, W)
        in [-1, 1]: a patch's first latent_dim - 1 principal coordinates and a constant, on the
        sphere; the decoder, the least-squares linear map from that code back to the patch.
        Through the patch shortcut alone: the conv paths start silent (their last layers are
        zeroed) and learn what the linear code misses. Keeps the kappa output's bias
        (``init_kappa``) and makes kappa the same for every token."""
        check_patch_code(self.cfg)
        p, d = self.cfg.patch_size, self.cfg.latent_dim
        patches = F.unfold(images.double(), p, stride=p).transpose(1, 2).reshape(-1, 3 * p * p)
        mean = patches.mean(0)
        _, _, vh = torch.linalg.svd(patches - mean, full_matrices=False)
        basis = vh[: d - 1]  # (d - 1, 3 p p), the principal directions
        coords = (patches - mean) @ basis.T
        # the constant as large as a typical patch's coordinates: the code then spans a good
        # part of the sphere, and its direction still tells a faint patch from a strong one
        scale = coords.norm(dim=1).median().clamp_min(1e-8)
        code = F.normalize(torch.cat([coords / scale, torch.ones_like(coords[:, :1])], 1), dim=1)
        code = torch.cat([code * math.sqrt(d), torch.ones_like(code[:, :1])], 1)
        decoder = torch.linalg.lstsq(code, patches).solution  # (d + 1, 3 p p)

        def put(layer: nn.Module, weight: torch.Tensor) -> None:
            layer.weight.zero_()
            layer.weight[: len(weight)] = weight.reshape(len(weight), *layer.weight.shape[1:])

        enc, dec = self.encoder, self.decoder
        enc.output.weight.zero_()
        put(enc.patch_in, torch.cat([basis / scale, torch.zeros_like(basis[:1])]))
        enc.patch_in.bias.zero_()
        enc.patch_in.bias[:d] = torch.cat([-(basis @ mean) / scale, mean.new_ones(1)])
        self.quant_proj.weight.zero_()
        self.quant_proj.weight[:d, :d] = torch.eye(d)
        self.quant_proj.bias[:d] = 0
        self.post_quant_proj.weight[:d] = torch.eye(d)
        self.post_quant_proj.weight[d:] = 0
        dec.conv_out[-1].weight.zero_()
        put(dec.patch_out, decoder[:d])
        dec.patch_out.bias.copy_(decoder[d].reshape(3, p * p).mean(1))

    def encode(self, images: torch.Tensor) -> SphericalPosterior:
        """images (B, 3, H, W) in [-1, 1] -> posterior over (B, num_tokens, latent_dim)."""
        if not self.training:
            # CPU convolutions run about 1.1x faster on channels-last inputs (256px encode,
            # benchmarks/README.md); training keeps the layout its steps were measured with
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.encoder(images)
        # the posterior's parameters in fp32 even under bf16 autocast: kappa spans 1 to 1e4
        with torch.autocast(features.device.type, enabled=False):
            h = self.quant_proj(features.float())
        mu = F.normalize(h[..., :-1], dim=-1)
        kappa = F.softplus(h[..., -1]) + 1.0
        return SphericalPosterior(mu, kappa)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, num_tokens, latent_dim) on the radius-sqrt(latent_dim) sphere -> images."""
        return self.decoder(self.post_quant_proj(latents.to(self.post_quant_proj.weight.dtype)))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, SphericalPosterior]:
        posterior = self.encode(images)
        return self.decode(posterior.sample()), posterior
