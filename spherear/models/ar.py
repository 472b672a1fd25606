"""SphereAR: a causal transformer over hyperspherical tokens with a flow-matching head.

Training (teacher forcing): [class tokens, tokens 0..N-2] -> causal blocks -> the N outputs
that predict tokens 0..N-1 -> + a per-position embedding = the head's condition z. The head
learns the velocity of each token's flow, ``diff_batch_mul`` noisy copies per token.

Sampling: KV-cached raster-order decoding. Each token is drawn by the head under
classifier-free guidance and then radially normalised to radius sqrt(latent_dim), so every
token fed back to the trunk or to the VAE decoder lies on the sphere the VAE was trained on.
(``sample.normalise`` moves the normalisation before guidance or drops it, for the paper's
comparison; ``to_latents`` maps tokens of Gaussian latents back for the decoder.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.utils.checkpoint

from spherear.config import ARConfig, SampleConfig
from spherear.models.diffusion_head import DiffusionHead
from spherear.models.flow import flow_matching_loss
from spherear.models.kv_cache import KVCache
from spherear.models.token_sampler import Generators, TokenSampler
from spherear.models.token_space import normalisation, tokens_to_latents
from spherear.models.transformer import Block, RMSNorm, rope_table_2d


class SphereAR(nn.Module):
    def __init__(self, config: ARConfig, latent_dim: int, grid_size: int):
        """``config`` must be resolved (``registry.resolve_ar``); the VAE fixes the token grid.
        (Guidance is a sampling setting, ``SampleConfig.cfg``.)"""
        super().__init__()
        self.config = config
        self.latent_dim = latent_dim
        self.num_tokens = grid_size**2
        self.num_prefix = config.num_class_tokens
        w = config.width
        self.cls_embedding = nn.Embedding(config.num_classes + 1, config.num_class_tokens * w)
        self.proj_in = nn.Linear(latent_dim, w)
        self.emb_norm = RMSNorm(w)
        self.layers = nn.ModuleList(Block(w, config.num_heads) for _ in range(config.depth))
        self.norm = RMSNorm(w)
        self.pos_for_diff = nn.Embedding(self.num_tokens, w)
        self.head = DiffusionHead(
            latent_dim, w, config.head_width, config.head_depth, config.head_groups
        )
        self.grid_size = grid_size
        # not saved with the weights (the released files lack it): rebuilt by reset_buffers
        self.register_buffer("rope", self._rope_table(), persistent=False)
        self.grad_checkpointing = False
        self.reset_parameters()

    def _rope_table(self) -> torch.Tensor:
        head_dim = self.config.width // self.config.num_heads
        return rope_table_2d(self.grid_size, head_dim, self.num_prefix)

    def reset_buffers(self) -> None:
        """Recompute the RoPE table, e.g. after building on the meta device."""
        self.rope = self._rope_table().to(self.pos_for_diff.weight.device)

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        self.head.zero_init_modulation()

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def class_tokens(self, labels: torch.Tensor) -> torch.Tensor:
        return self.cls_embedding(labels).view(len(labels), self.num_prefix, -1)

    def _trunk(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        start = cache.length if cache is not None else 0
        rope = self.rope[start : start + x.shape[1]]
        for i, layer in enumerate(self.layers):
            if self.grad_checkpointing and cache is None and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(layer, x, rope, True, use_reentrant=False)
            else:
                x = layer(x, rope, True, cache, i)
        if cache is not None:
            cache.advance(x.shape[1])
        return self.norm(x)

    def conditions(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced head conditions z (B, N, width) for tokens (B, N, latent_dim)."""
        x = torch.cat([self.class_tokens(labels), self.proj_in(tokens[:, :-1])], dim=1)
        h = self._trunk(self.emb_norm(x))
        return h[:, self.num_prefix - 1 :] + self.pos_for_diff.weight

    def forward(
        self,
        tokens: torch.Tensor,
        labels: torch.Tensor,
        drop: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Flow-matching loss for latent tokens (B, N, latent_dim) of images of class ``labels``.

        The random draws can be passed in, made per sample elsewhere so that a batch gives
        the same loss however it is split across processes: ``drop`` (B,) bool replaces a
        label by the null class, ``t`` (B, k, N) and ``noise`` (B, k, N, latent_dim) are the
        flow times and noise of the k = ``diff_batch_mul`` copies of every token.
        """
        k = self.config.diff_batch_mul
        if drop is None and self.training:
            drop = torch.rand(labels.shape, device=labels.device) < self.config.class_dropout
        if drop is not None:
            labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        z = self.conditions(tokens, labels)
        # every condition is reused for several (t, noise) draws: cheap extra head samples
        z = z.reshape(-1, z.shape[-1]).repeat(k, 1)
        target = tokens.reshape(-1, self.latent_dim).repeat(k, 1)
        if t is not None:
            t = t.transpose(0, 1).reshape(-1)
            noise = noise.transpose(0, 1).reshape(-1, self.latent_dim)
        return flow_matching_loss(lambda x, s: self.head(x, s, z), target, t, noise)

    @torch.no_grad()
    def decode_loop(
        self, labels: torch.Tensor, choose: Callable[[int, torch.Tensor], torch.Tensor]
    ) -> None:
        """KV-cached decoding. ``choose(i, z_i)`` gets the head condition (rows, width) of
        token i and returns the token (rows, latent_dim) to feed back."""
        cache = KVCache(self.num_prefix + self.num_tokens - 1)
        h = self._trunk(self.emb_norm(self.class_tokens(labels)), cache)[:, -1]
        for i in range(self.num_tokens):
            token = choose(i, h + self.pos_for_diff.weight[i])
            if i + 1 < self.num_tokens:
                x = self.emb_norm(self.proj_in(token.to(self.proj_in.weight.dtype))[:, None])
                h = self._trunk(x, cache)[:, -1]

    @torch.no_grad()
    def sample(
        self,
        labels: torch.Tensor,
        settings: SampleConfig | None = None,
        generator: Generators = None,
    ) -> torch.Tensor:
        """Latent tokens (B, N, latent_dim) on the sphere for class ``labels`` (B,), each drawn
        by the head as ``settings`` says (default: the paper's CFG 4.5, linear, 100 SDE steps).

        ``generator`` may be a list of B generators, one per row: row j then draws all its
        noise from generator j, so its tokens do not depend on which rows share its batch.
        """
        settings = settings or SampleConfig()
        rows = labels
        if settings.cfg != 1.0:
            rows = torch.cat([labels, torch.full_like(labels, self.null_class)])
        sampler = TokenSampler(self.head, len(labels), self.num_tokens, settings, generator,
                               labels.device, normalisation(settings, self.config))  # fmt: skip
        with torch.inference_mode():
            self.decode_loop(rows, sampler)
        return sampler.tokens.clone()  # a plain tensor: usable where autograd is on

    def to_latents(self, tokens: torch.Tensor) -> torch.Tensor:
        """Sampled tokens -> what the VAE decoder takes (the same, for an S-VAE's tokens)."""
        return tokens_to_latents(tokens, self.config)
