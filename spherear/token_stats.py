"""The paper's mechanism, measured: the norms of generated tokens and the variance of each
latent dimension, beside the same figures for the data's tokens.

SphereAR's argument is that Gaussian latents drift in scale under classifier-free guidance
("variance collapse") while tokens put back onto the sphere cannot. ``spherear sample``
keeps running sums of its tokens with every chunk (``token_sums``), so a sample set of any
size ends with ``token_stats.json`` and ``token_norms.png`` beside ``samples.npz``; the data's
figures come from posterior samples of the latent cache, mapped to tokens as in training.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from spherear.figures import pyplot, save_png


def token_sums(tokens: torch.Tensor) -> dict[str, np.ndarray]:
    """Running sums of tokens (B, N, D), in fp64: count, per-position norm sums, squares,
    minima and maxima, and per-dimension sums and squares."""
    t = tokens.detach().double().cpu()
    norms = t.norm(dim=-1)
    return {
        "count": np.array([t.shape[0]], np.float64),
        "norm_sum": norms.sum(0).numpy(),
        "norm_sq": norms.square().sum(0).numpy(),
        "norm_min": norms.min(0).values.numpy(),
        "norm_max": norms.max(0).values.numpy(),
        "dim_sum": t.sum((0, 1)).numpy(),
        "dim_sq": t.square().sum((0, 1)).numpy(),
    }


def merge(parts: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The sums of several batches as one."""
    merged: dict[str, np.ndarray] = {}
    for part in parts:
        for key, value in part.items():
            if key not in merged:
                merged[key] = value.copy()
            elif key == "norm_min":
                merged[key] = np.minimum(merged[key], value)
            elif key == "norm_max":
                merged[key] = np.maximum(merged[key], value)
            else:
                merged[key] = merged[key] + value
    return merged


def summarise(sums: dict[str, np.ndarray]) -> dict:
    """The figures: token norm mean, spread (std), min and max over every token, the mean
    and spread per token position, and each latent dimension's variance."""
    n = float(sums["count"][0])
    per_position = sums["norm_sum"] / n
    position_std = np.sqrt(np.maximum(sums["norm_sq"] / n - per_position**2, 0))
    tokens = n * len(per_position)
    mean = sums["norm_sum"].sum() / tokens
    dim_mean = sums["dim_sum"] / tokens
    variance = np.maximum(sums["dim_sq"] / tokens - dim_mean**2, 0)
    return {
        "images": int(n),
        "norm": {
            "mean": float(mean),
            "std": float(np.sqrt(max(sums["norm_sq"].sum() / tokens - mean**2, 0))),
            "min": float(sums["norm_min"].min()),
            "max": float(sums["norm_max"].max()),
        },
        "norm_by_position": {"mean": per_position.tolist(), "std": position_std.tolist()},
        "dim_variance": variance.tolist(),
        "dim_variance_range": [float(variance.min()), float(variance.max())],
    }


def data_sums(cache_dir: str | Path, recipe, max_images: int = 1000, seed: int = 0):
    """Sums of the data's tokens: one posterior sample of each of the first ``max_images``
    images of the latent cache (a random view each), mapped to tokens as train-ar does."""
    from spherear.data.latent_cache import LatentDataset
    from spherear.models.token_space import latents_to_tokens

    data = LatentDataset(cache_dir)
    indices = list(range(min(max_images, len(data))))
    generators = [torch.Generator().manual_seed(seed + i) for i in indices]
    latents, _ = data.draw_batch(indices, generators)
    return token_sums(latents_to_tokens(latents, recipe.vae, recipe.ar))


def plot(figures: dict[str, dict], path: str | Path, title: str = "") -> Path:
    """Two panels: the mean token norm (and its spread) by position, and each dimension's
    variance, one line per labelled summary of ``figures``."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    for label, summary in figures.items():
        mean = np.array(summary["norm_by_position"]["mean"])
        std = np.array(summary["norm_by_position"]["std"])
        (line,) = left.plot(mean, lw=1, label=label)
        left.fill_between(range(len(mean)), mean - std, mean + std, alpha=0.15,
                          color=line.get_color())  # fmt: skip
        right.plot(summary["dim_variance"], lw=1, marker=".", label=label)
    left.set(xlabel="token position (raster order)", ylabel="token norm",
             title="norm by position (mean ± std)")  # fmt: skip
    right.set(xlabel="latent dimension", ylabel="variance", title="variance by dimension")
    right.set_yscale("log")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path, "token-stats/plot")
