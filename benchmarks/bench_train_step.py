"""One optimiser step of a real recipe (default SphereAR-B) at a small batch on CPU (or
CUDA), from cached latents and from images encoded on the fly; seconds and peak memory.

    python benchmarks/bench_train_step.py [--recipe recipes/sphere_b.toml] [--batch 2]

Each input mode runs in its own process, so each peak-memory figure is its own. Weights
are random: the cost of a step does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def one_step(recipe_path: str, batch: int, mode: str) -> dict:
    from spherear.config import load_recipe
    from spherear.models import build_ar, build_vae
    from spherear.models.token_sampler import to_sphere
    from spherear.train.optim import adamw

    recipe = load_recipe(recipe_path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ar = build_ar(recipe).to(device).train()
    vae = build_vae(recipe).to(device).eval().requires_grad_(False) if mode == "images" else None
    optimizer = adamw(ar, recipe.train, ("cls_embedding", "proj_in"))
    labels = torch.arange(batch, device=device) % recipe.ar.num_classes
    images = torch.rand(batch, 3, recipe.vae.resolution, recipe.vae.resolution, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    encode_times = []

    def step() -> None:
        with autocast:
            if vae is not None:
                start = time.perf_counter()
                with torch.no_grad():
                    tokens = vae.encode(images * 2 - 1).sample()
                encode_times.append(time.perf_counter() - start)
            else:
                tokens = to_sphere(torch.randn(batch, ar.num_tokens, ar.latent_dim, device=device))
            loss = ar(tokens, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ar.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: allocates optimiser state
    times = []
    for _ in range(3):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    seconds = sorted(times)[1]  # the median of three
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    result = {"mode": mode, "device": device.type, "batch": batch, "seconds_per_step": seconds,
              "peak_memory_mb": round(peak_mb), "threads": torch.get_num_threads()}  # fmt: skip
    if encode_times:
        result["encode_seconds_median"] = sorted(encode_times[1:])[1]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "sphere_b.toml"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--mode", choices=["latents", "images"])
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(one_step(args.recipe, args.batch, args.mode)))
        return
    results = {}
    for mode in ("latents", "images"):
        cmd = [sys.executable, __file__, "--recipe", args.recipe, "--batch", str(args.batch),
               "--mode", mode]  # fmt: skip
        results[mode] = json.loads(subprocess.run(cmd, capture_output=True, text=True,
                                                  check=True).stdout)  # fmt: skip
    ratio = results["images"]["seconds_per_step"] / results["latents"]["seconds_per_step"]
    results["images_over_latents_time"] = round(ratio, 3)
    results["recipe"] = args.recipe
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
