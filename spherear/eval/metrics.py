"""The ADM evaluator's metrics on precomputed features: FID, sFID, IS, precision/recall.

Follows OpenAI's guided-diffusion ``evaluations/evaluator.py`` (the protocol behind published
ImageNet numbers): statistics in float64, the Fréchet distance through the eigenvalues of
S1 S2, the Inception score over splits in file order, and precision/recall from k-NN balls
with distances in float16 blocks. No model code here; features come from ``features.py``.
"""

from __future__ import annotations

import numpy as np
import torch

SPATIAL_CHANNELS = 7  # ADM keeps the first 7 channels of Mixed_6d's 1x1 branch for sFID


def feature_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, as ``np.cov``) of N x D features, in float64."""
    x = np.asarray(features.cpu() if torch.is_tensor(features) else features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need an N x D array with N >= 2, got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


class RunningStatistics:
    """``feature_statistics`` over features that arrive in chunks (a whole training set),
    shifted by the first chunk's mean so the float64 sums do not cancel."""

    def __init__(self) -> None:
        self.n = 0
        self.shift: np.ndarray | None = None
        self.sum: np.ndarray | None = None
        self.outer: np.ndarray | None = None

    def add(self, features: np.ndarray) -> None:
        x = np.asarray(features, dtype=np.float64)
        if self.shift is None:
            self.shift = x.mean(axis=0)
            self.sum = np.zeros_like(self.shift)
            self.outer = np.zeros((x.shape[1], x.shape[1]))
        x = x - self.shift
        self.n += len(x)
        self.sum += x.sum(axis=0)
        self.outer += x.T @ x

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors, got {self.n}")
        mean = self.sum / self.n
        sigma = (self.outer - self.n * np.outer(mean, mean)) / (self.n - 1)
        return mean + self.shift, sigma


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2), with tr sqrt(S1 S2) taken as the sum
    of the square roots of the eigenvalues of S1 S2 (robust where ``scipy.linalg.sqrtm``
    is not). May be a tiny negative number for identical inputs."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
            f"sigma {sigma1.shape} vs {sigma2.shape}"
        )
    diff = mu1 - mu2
    eigenvalues = np.linalg.eigvals(sigma1 @ sigma2).astype(np.complex128)
    tr_covmean = np.sqrt(eigenvalues).real.sum()
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def spatial_features(maps: torch.Tensor) -> torch.Tensor:
    """sFID features from N x C x 17 x 17 maps: the first 7 channels, channels LAST, flat
    (N x 2023), as TensorFlow's NHWC layout gives them; channel-first is a different metric."""
    return maps[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(len(maps), -1)


def inception_score(logits: np.ndarray | torch.Tensor, split_size: int = 5000) -> float:
    """exp(E KL(p(y|x) || p(y))) per consecutive split of ``split_size`` rows (file order),
    averaged over splits; ``logits`` are the classifier's outputs without its bias."""
    x = torch.as_tensor(np.asarray(logits.cpu() if torch.is_tensor(logits) else logits))
    log_p = torch.log_softmax(x.double(), dim=1)
    scores = []
    for part in log_p.split(split_size):
        p = part.exp()
        log_marginal = p.mean(dim=0).log()
        # p log p is 0 where p underflows to 0; xlogy-style masking keeps it finite
        kl = torch.where(p > 0, p * (part - log_marginal), torch.zeros_like(p)).sum(dim=1)
        scores.append(kl.mean().exp().item())
    return float(np.mean(scores))


def _pairwise(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    norm_u = (u * u).sum(dim=1, keepdim=True)
    norm_v = (v * v).sum(dim=1, keepdim=True)
    return (norm_u - 2 * (u @ v.T) + norm_v.T).clamp_min(0)


def _squared_distances(u: torch.Tensor, v: torch.Tensor, half: bool) -> torch.Tensor:
    """Pairwise squared distances; in float16 like ADM unless that overflows, then float32."""
    if half:
        d = _pairwise(u.half(), v.half())
        if torch.isfinite(d).all():
            return d.float()
    return _pairwise(u.float(), v.float())


def _kth_neighbour_radii(x: torch.Tensor, k: int, block: int, half: bool) -> torch.Tensor:
    """Squared distance of each row to its k-th nearest neighbour in ``x`` (itself excluded:
    it is the 0-th)."""
    radii = []
    for rows in x.split(block):
        nearest = None
        for cols in x.split(block):
            d = _squared_distances(rows, cols, half)
            if nearest is not None:
                d = torch.cat([nearest, d], dim=1)
            nearest = d.topk(min(k + 1, d.shape[1]), dim=1, largest=False).values
        radii.append(nearest.max(dim=1).values)
    return torch.cat(radii)


def _share_inside(
    points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int, half: bool
) -> float:
    """Share of ``points`` within the ball of some centre."""
    inside = []
    for rows in points.split(block):
        hit = torch.zeros(len(rows), dtype=torch.bool, device=rows.device)
        for cols, r in zip(centres.split(block), radii.split(block), strict=True):
            hit |= (_squared_distances(rows, cols, half) <= r[None]).any(dim=1)
        inside.append(hit)
    return torch.cat(inside).double().mean().item()


def precision_recall(
    reference: np.ndarray | torch.Tensor,
    samples: np.ndarray | torch.Tensor,
    k: int = 3,
    block: int = 10_000,
    half: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """ADM's improved precision and recall on pool features: the radius of a point is the
    distance to its k-th nearest neighbour within its own set; precision = share of samples
    in some reference ball, recall = share of reference points in some sample ball."""
    ref = torch.as_tensor(np.asarray(reference, np.float32), device=device)
    sam = torch.as_tensor(np.asarray(samples, np.float32), device=device)
    if len(ref) <= k or len(sam) <= k:
        raise ValueError(f"precision/recall needs more than k={k} points in each set")
    ref_radii = _kth_neighbour_radii(ref, k, block, half)
    sam_radii = _kth_neighbour_radii(sam, k, block, half)
    precision = _share_inside(sam, ref, ref_radii, block, half)
    recall = _share_inside(ref, sam, sam_radii, block, half)
    return precision, recall
