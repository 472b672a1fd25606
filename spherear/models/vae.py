"""S-VAE: the hybrid CNN-ViT tokenizer with a power-spherical posterior.

Encoder: conv stem -> residual down blocks -> tokens -> registers + non-causal blocks ->
RMSNorm -> linear. ``quant_proj`` maps each token to a direction (latent_dim numbers,
l2-normalised) and a concentration. Decoder: the mirror image, fed with latents on the
sphere of radius sqrt(latent_dim).

The paper's comparisons swap two parts (``vae.posterior``, ``vae.backbone``):
- a diagonal Gaussian posterior (mean and log-variance per token, KL to N(0, I)) in place
  of the power-spherical one; its latents are not on any sphere;
- a pure CNN backbone (the ViT blocks replaced by residual conv blocks on the token grid)
  or a pure ViT one (the conv stages replaced by a patch embedding and, in the decoder, a
  linear map back to pixels, plus more ViT blocks). Each pure backbone gets as many blocks
  of its own kind as the removed part had parameters (``replacement_blocks``), so the three
  compare at about one parameter count; the token grid is the same.

``patch_shortcut`` (ours, off in the paper's models) adds a linear map from each token's
pixel patch to its features, and one from the decoder's input token back to its patch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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


class ResBlock(nn.Module):
    """The pure CNN's stand-in for a ViT block: GN-SiLU-conv-GN-SiLU-conv, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(
            group_norm(channels), nn.SiLU(), _conv3x3(channels, channels),
            group_norm(channels), nn.SiLU(), _conv3x3(channels, channels),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def replacement_blocks(cfg: VAEConfig) -> dict[str, int]:
    """Blocks of its own kind that the pure backbone ``cfg.backbone`` adds to the encoder
    and the decoder in place of the hybrid's part it drops: the removed parameters divided
    by one block's, rounded (hybrid: none). Counted on the meta device, so free."""
    if cfg.backbone == "hybrid":
        return {"encoder": 0, "decoder": 0}
    ch, w, p = cfg.channels, cfg.width, cfg.patch_size
    with torch.device("meta"):
        block = _numel(Block(w, cfg.num_heads)) if cfg.backbone == "vit" else _numel(ResBlock(w))
        if cfg.backbone == "cnn":  # the ViT blocks and the registers go
            registers = cfg.num_registers * w
            removed = {
                "encoder": cfg.encoder_depth * _numel(Block(w, cfg.num_heads)) + registers,
                "decoder": cfg.decoder_depth * _numel(Block(w, cfg.num_heads)) + registers,
            }
        else:  # the conv stages go; a patch embedding and a linear unpatchify come in
            down = [_conv3x3(3, ch[0]), *(DownBlock(ch[i], ch[i + 1]) for i in range(len(ch) - 1))]
            up = [_conv3x3(w, w), *(UpBlock(ch[-1 - i], ch[-2 - i]) for i in range(len(ch) - 1)),
                  group_norm(ch[0]), _conv3x3(ch[0], 3)]  # fmt: skip
            removed = {
                "encoder": sum(map(_numel, down)) - (3 * p * p * w + w),
                "decoder": sum(map(_numel, up)) - (w * 3 * p * p + 3 * p * p + w),
            }
    return {part: max(0, round(n / block)) for part, n in removed.items()}


class _RegisterTransformer(nn.Module):
    """Non-causal blocks over [registers, grid tokens]; returns the grid tokens only."""

    def __init__(self, cfg: VAEConfig, depth: int):
        super().__init__()
        # the pure CNN has no ViT blocks and so no registers
        self.num_registers = 0 if cfg.backbone == "cnn" else cfg.num_registers
        head_dim = cfg.width // cfg.num_heads
        # persistent: the authors' checkpoints carry this table, so loading them checks ours
        self.register_buffer(
            "freqs_cis", rope_table_2d(cfg.grid_size, head_dim, self.num_registers)
        )
        # none at all rather than an empty table: checkpoint files drop empty tensors
        self.register_token = (
            nn.Embedding(self.num_registers, cfg.width) if self.num_registers else None
        )
        self.layers = nn.ModuleList(Block(cfg.width, cfg.num_heads) for _ in range(depth))
        self.conv_blocks = nn.ModuleList()  # the pure CNN's, on the token grid

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


def _backbone_depth(cfg: VAEConfig, part: str) -> tuple[int, int]:
    """(ViT blocks, conv blocks on the token grid) of the encoder or decoder."""
    depth = cfg.encoder_depth if part == "encoder" else cfg.decoder_depth
    extra = replacement_blocks(cfg)[part]
    return {"hybrid": (depth, 0), "cnn": (0, extra), "vit": (depth + extra, 0)}[cfg.backbone]


class Encoder(_RegisterTransformer):
    def __init__(self, cfg: VAEConfig):
        blocks, conv_blocks = _backbone_depth(cfg, "encoder")
        super().__init__(cfg, blocks)
        ch, p = cfg.channels, cfg.patch_size
        self.conv_blocks.extend(ResBlock(cfg.width) for _ in range(conv_blocks))
        if cfg.backbone == "vit":
            self.patch_embed = nn.Conv2d(3, cfg.width, p, p)
        else:
            self.conv_in = _conv3x3(3, ch[0])
            self.down = nn.ModuleList(DownBlock(ch[i], ch[i + 1]) for i in range(len(ch) - 1))
        self.norm = RMSNorm(cfg.width)
        self.output = nn.Linear(cfg.width, cfg.width, bias=False)
        self.patch_in = nn.Conv2d(3, cfg.width, p, p) if cfg.patch_shortcut else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "patch_embed"):
            x = self.patch_embed(images)
        else:
            x = self.conv_in(images)
            for block in self.down:
                x = block(x)
        for block in self.conv_blocks:
            x = block(x)
        features = self.output(self.norm(self.run_blocks(_to_tokens(x))))
        if self.patch_in is not None:
            features = features + _to_tokens(self.patch_in(images))
        return features


class Decoder(_RegisterTransformer):
    def __init__(self, cfg: VAEConfig):
        blocks, conv_blocks = _backbone_depth(cfg, "decoder")
        super().__init__(cfg, blocks)
        ch, p = cfg.channels[::-1], cfg.patch_size
        self.patch_size = p
        if cfg.backbone == "vit":
            self.norm = RMSNorm(cfg.width)
            self.unpatchify = nn.Linear(cfg.width, 3 * p * p)
        else:
            self.conv_in = _conv3x3(cfg.width, cfg.width)
            self.up = nn.ModuleList(UpBlock(ch[i], ch[i + 1]) for i in range(len(ch) - 1))
            self.conv_out = nn.Sequential(group_norm(ch[-1]), nn.SiLU(), _conv3x3(ch[-1], 3))
        self.conv_blocks.extend(ResBlock(cfg.width) for _ in range(conv_blocks))
        self.patch_out = nn.ConvTranspose2d(cfg.width, 3, p, p) if cfg.patch_shortcut else None

    @property
    def last_layer(self) -> nn.Module:
        """The layer that writes the pixels (zeroed to start from a patch code)."""
        return self.unpatchify if hasattr(self, "unpatchify") else self.conv_out[-1]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        grid = _to_grid(tokens)
        if hasattr(self, "unpatchify"):
            pixels = self.unpatchify(self.norm(self.run_blocks(_to_tokens(grid))))
            image = F.pixel_shuffle(_to_grid(pixels), self.patch_size)
        else:
            x = self.conv_in(grid)
            for block in self.conv_blocks:
                x = block(x)
            x = _to_grid(self.run_blocks(_to_tokens(x)))
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

    # what the latent cache stores of it, and in which precision
    CACHED = {"mu": torch.float16, "kappa": torch.float32}

    def __init__(self, mu: torch.Tensor, kappa: torch.Tensor):
        self.mu, self.kappa = mu, kappa
        self.dist = PowerSpherical(mu, kappa)
        self.radius = math.sqrt(mu.shape[-1])

    def sample(self) -> torch.Tensor:
        return self.dist.rsample() * self.radius

    def draw(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """A sample without gradient, row j of the leading dimension from generator j."""
        return self.dist.sample(generators) * self.radius

    def mode(self) -> torch.Tensor:
        return self.dist.mu * self.radius

    def kl(self) -> torch.Tensor:
        """KL to the uniform distribution on the sphere, per token."""
        return self.dist.kl_to_uniform()

    def cached(self) -> dict[str, torch.Tensor]:
        return {"mu": self.mu, "kappa": self.kappa}


class GaussianPosterior:
    """q(z | x) per token: a diagonal Gaussian, as in MAR's KL-16 VAE."""

    CACHED = {"mean": torch.float32, "logvar": torch.float32}

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        self.mean, self.logvar = mean.float(), logvar.float()
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self) -> torch.Tensor:
        return self.mean + self.std * torch.randn_like(self.mean)

    @torch.no_grad()
    def draw(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """A sample without gradient, row j of the leading dimension from generator j."""
        shape = self.mean.shape[1:]
        eps = torch.stack([torch.randn(shape, generator=g, device=self.mean.device)
                           for g in generators])  # fmt: skip
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL to N(0, I), per token: the sum over dimensions of (m^2 + s^2 - 1 - log s^2) / 2."""
        return 0.5 * (self.mean.square() + self.logvar.exp() - 1 - self.logvar).sum(-1)

    def cached(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "logvar": self.logvar}


Posterior = SphericalPosterior | GaussianPosterior
POSTERIORS: dict[str, type] = {"power_spherical": SphericalPosterior, "gaussian": GaussianPosterior}


class SphericalVAE(nn.Module):
    """The tokenizer; with ``vae.posterior = "gaussian"`` the same network with a Gaussian
    posterior (the paper's KL-16 baseline), whose latents are not on the sphere."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        # direction and concentration, or mean and log-variance
        outputs = cfg.latent_dim + (1 if cfg.posterior == "power_spherical" else cfg.latent_dim)
        self.quant_proj = nn.Linear(cfg.width, outputs)
        self.post_quant_proj = nn.Linear(cfg.latent_dim, cfg.width, bias=False)

    @property
    def spherical(self) -> bool:
        return self.cfg.posterior == "power_spherical"

    @torch.no_grad()
    def init_std(self, std: float) -> None:
        """Start every Gaussian posterior near standard deviation ``std`` (> 0)."""
        if self.spherical or std <= 0:
            raise ValueError(f"init_std needs a Gaussian posterior and std > 0, got {std}")
        self.quant_proj.weight[self.cfg.latent_dim :] = 0
        self.quant_proj.bias[self.cfg.latent_dim :] = 2 * math.log(std)

    @torch.no_grad()
    def init_kappa(self, kappa: float) -> None:
        """Start every posterior near concentration ``kappa`` (> 1): the inverse of the
        softplus + 1 in ``encode``, put in the bias of the kappa output."""
        if not self.spherical:
            raise ValueError("init_kappa needs a power-spherical posterior")
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
        (``init_kappa``) and makes kappa the same for every token; a Gaussian posterior takes
        the same code as its mean, its log-variance the same for every token (``init_std``)."""
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
        code = torch.cat([coords / scale, torch.ones_like(coords[:, :1])], 1)
        # what the posterior's mode is: on the sphere, or for a Gaussian the code as it is
        code = F.normalize(code, dim=1) * math.sqrt(d) if self.spherical else code
        code = torch.cat([code, torch.ones_like(code[:, :1])], 1)
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
        dec.last_layer.weight.zero_()
        if dec.last_layer.bias is not None:
            dec.last_layer.bias.zero_()
        put(dec.patch_out, decoder[:d])
        dec.patch_out.bias.copy_(decoder[d].reshape(3, p * p).mean(1))

    def encode(self, images: torch.Tensor) -> Posterior:
        """images (B, 3, H, W) in [-1, 1] -> posterior over (B, num_tokens, latent_dim)."""
        if not self.training:
            # CPU convolutions run about 1.1x faster on channels-last inputs (256px encode,
            # benchmarks/README.md); training keeps the layout its steps were measured with
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.encoder(images)
        # the posterior's parameters in fp32 even under bf16 autocast: kappa spans 1 to 1e4
        with torch.autocast(features.device.type, enabled=False):
            h = self.quant_proj(features.float())
        if not self.spherical:
            return GaussianPosterior(*h.chunk(2, dim=-1))
        mu = F.normalize(h[..., :-1], dim=-1)
        kappa = F.softplus(h[..., -1]) + 1.0
        return SphericalPosterior(mu, kappa)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, num_tokens, latent_dim) -> images; an S-VAE's lie on the sphere of
        radius sqrt(latent_dim)."""
        return self.decoder(self.post_quant_proj(latents.to(self.post_quant_proj.weight.dtype)))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, Posterior]:
        posterior = self.encode(images)
        return self.decode(posterior.sample()), posterior
