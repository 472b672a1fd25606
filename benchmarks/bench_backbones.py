"""The three VAE backbones' training speed, as the paper compares them: one step (L1 + KL,
forward, backward, AdamW) of the hybrid CNN-ViT, the pure CNN and the pure ViT, timed
interleaved (A B C A B C ...) so that a busy machine slows all three alike; medians.

    python benchmarks/bench_backbones.py [--recipe recipes/vae.toml] [--batch 1] [--repeats 5]

The tiny recipe has no ViT blocks, so ``--set`` gives it some, as recipes/ablations/
backbones.toml does: ``--recipe recipes/tiny_vae.toml --set vae.encoder_depth=1 --set
vae.decoder_depth=2 --batch 16``. Weights are random: a step's cost does not depend on them.
Prints JSON: parameters, median seconds per step and steps per second per backbone, the
load average before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time

import torch


def main() -> None:
    from spherear.config import load_recipe
    from spherear.models.vae import SphericalVAE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/vae.toml")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    recipe = load_recipe(args.recipe, args.overrides)
    size = recipe.vae.resolution
    images = torch.rand(args.batch, 3, size, size) * 2 - 1
    models, optimizers = {}, {}
    for backbone in ("hybrid", "cnn", "vit"):
        torch.manual_seed(0)
        models[backbone] = SphericalVAE(dataclasses.replace(recipe.vae, backbone=backbone))
        optimizers[backbone] = torch.optim.AdamW(models[backbone].parameters(), lr=1e-4)

    def step(backbone: str) -> float:
        model, optimizer = models[backbone], optimizers[backbone]
        start = time.perf_counter()
        recon, posterior = model(images)
        loss = (recon - images).abs().mean() + 1e-4 * posterior.kl().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    load_before = os.getloadavg()[0]
    for backbone in models:  # warm-up: allocator and kernel selection
        step(backbone)
    seconds: dict[str, list[float]] = {b: [] for b in models}
    for _ in range(args.repeats):
        for backbone in models:
            seconds[backbone].append(step(backbone))
    result = {
        "recipe": args.recipe,
        "overrides": args.overrides,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "load_average": [load_before, os.getloadavg()[0]],
    }
    for backbone, times in seconds.items():
        median = statistics.median(times)
        params = sum(p.numel() for p in models[backbone].parameters())
        result[backbone] = {"parameters": params, "seconds_per_step": median,
                            "steps_per_s": 1 / median}  # fmt: skip
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
