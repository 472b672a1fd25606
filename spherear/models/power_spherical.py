"""The power-spherical distribution on the unit sphere S^{m-1} (De Cao & Aziz, 2020).

It is the S-VAE posterior: mean direction ``mu`` (unit vectors, last dim m) and
concentration ``kappa`` >= 0. Unlike von Mises-Fisher it samples without rejection, so the
reparameterised sample is cheap and exact. All maths runs in fp32 even under bf16 autocast;
the per-token special functions (lgamma, digamma) run in fp64, because at kappa ~ 1e4 their
difference cancels most of an fp32 mantissa.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def log_sphere_area(m: int) -> float:
    """log of the surface area of the unit sphere S^{m-1} in R^m."""
    return math.log(2.0) + (m / 2) * math.log(math.pi) - math.lgamma(m / 2)


class PowerSpherical:
    def __init__(self, mu: torch.Tensor, kappa: torch.Tensor):
        self.mu = mu.float()
        self.kappa = kappa.float()
        self.dim = mu.shape[-1]
        d = self.dim - 1
        kappa64 = self.kappa.double()
        self._alpha = kappa64 + d / 2
        self._beta = torch.full_like(kappa64, d / 2)

    @property
    def _log_normalizer(self) -> torch.Tensor:
        a, b = self._alpha, self._beta
        return -(
            (a + b) * math.log(2.0) + b * math.log(math.pi) + torch.lgamma(a) - torch.lgamma(a + b)
        )

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            dot = (self.mu * x.float()).sum(-1)
            # xlogy: kappa = 0 at x = -mu is 0 * log 0 = 0, not nan
            return self._log_normalizer.float() + torch.xlogy(self.kappa, (1 + dot).clamp_min(0))

    def _entropy64(self) -> torch.Tensor:
        a, b = self._alpha, self._beta
        mean_log = math.log(2.0) + torch.digamma(a) - torch.digamma(a + b)
        return -(self._log_normalizer + self.kappa.double() * mean_log)

    def entropy(self) -> torch.Tensor:
        return self._entropy64().float()

    def kl_to_uniform(self) -> torch.Tensor:
        """KL(q || uniform on S^{m-1}) = log area - entropy, always >= 0."""
        return (log_sphere_area(self.dim) - self._entropy64()).float()

    @property
    def mean_cosine(self) -> torch.Tensor:
        """E[mu . z] = (alpha - beta) / (alpha + beta)."""
        return ((self._alpha - self._beta) / (self._alpha + self._beta)).float()

    def rsample(self) -> torch.Tensor:
        """Reparameterised sample on the unit sphere, differentiable in mu and kappa."""
        with torch.autocast(self.mu.device.type, enabled=False):
            z = torch.distributions.Beta(self._alpha.float(), self._beta.float()).rsample()
            v = torch.randn(*self.mu.shape[:-1], self.dim - 1, device=self.mu.device)
            return self._place(z, v)

    @torch.no_grad()
    def sample(
        self, generator: torch.Generator | Sequence[torch.Generator] | None = None
    ) -> torch.Tensor:
        """A sample drawn from ``generator`` (no gradient): reproducible per item, for
        training data that must not depend on how a batch is split across processes. With
        one generator per row of the leading dimension, row j draws from generator j alone,
        exactly as if it were sampled by itself."""
        concentration = torch.stack([self._alpha, self._beta], -1).float()
        if generator is None or isinstance(generator, torch.Generator):
            return self._place(*self._draws(concentration, self.mu, generator))
        rows = [self._draws(c, mu, g)
                for c, mu, g in zip(concentration, self.mu, generator, strict=True)]  # fmt: skip
        return self._place(torch.stack([z for z, _ in rows]), torch.stack([v for _, v in rows]))

    def _draws(self, concentration: torch.Tensor, mu: torch.Tensor, generator):
        """The Beta draw z and the direction v (shaped like ``mu`` less one) of a sample."""
        z = torch._sample_dirichlet(concentration, generator=generator)[..., 0]
        shape = (*mu.shape[:-1], self.dim - 1)
        return z, torch.randn(shape, device=mu.device, generator=generator)

    def _place(self, z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Beta draw z and direction v -> the point at cosine 2z - 1 from mu."""
        t = (2 * z - 1).unsqueeze(-1)
        y = torch.cat([t, (1 - t.square()).clamp_min(0).sqrt() * F.normalize(v, dim=-1)], -1)
        return _householder_to(y, self.mu)


def _householder_to(y: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Reflect ``y`` with the Householder map that takes e1 to ``mu``."""
    e1 = torch.zeros_like(mu)
    e1[..., 0] = 1.0
    u = e1 - mu
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return y - 2 * (y * u).sum(-1, keepdim=True) * u
