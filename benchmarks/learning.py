"""Does the tiny pipeline learn? train-vae then train-ar on the synthetic set, on CPU.

    python benchmarks/learning.py --workdir /tmp/spherear-learning [--steps 300] [--vae-steps N]

Phases: prepare-data (synthetic, 32px) -> train-vae for --vae-steps (default --steps) ->
cache-latents with that VAE -> train-ar for --steps. A rerun with more --vae-steps in the
same workdir resumes the VAE run and caches and trains the AR anew. Prints JSON: each
curve at a few steps, the VAE's L1 drop from step 1 to step --steps (target >= 50%) and the
AR flow loss drop between 10-step means at both ends (target >= 30%). The VAE trains as
recipes/tiny_vae.toml says: L1 + KL, no LPIPS or discriminator at this scale.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from spherear.checkpoints import load_checkpoint
from spherear.config import load_recipe
from spherear.data.latent_cache import cache_latents
from spherear.data.prepare import prepare_dataset
from spherear.train.ar import train_ar
from spherear.train.metrics import read_metrics
from spherear.train.vae import train_vae

ROOT = Path(__file__).resolve().parent.parent


def curve(run: Path, key: str, every: int) -> dict[int, float]:
    return {m["step"]: round(m[key], 4) for m in read_metrics(run) if key in m
            and (m["step"] % every == 0 or m["step"] == 1)}  # fmt: skip


def drop(run: Path, key: str, window: int = 10) -> dict[str, float]:
    values = [m[key] for m in read_metrics(run) if key in m]
    first = sum(values[:window]) / window
    last = sum(values[-window:]) / window
    return {"first_mean": first, "last_mean": last, "relative_drop": 1 - last / first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--vae-steps", type=int, default=None)
    parser.add_argument("--vae-set", action="append", default=[], help="VAE recipe override")
    parser.add_argument("--ar-set", action="append", default=[], help="AR recipe override")
    args = parser.parse_args()
    w = args.workdir
    vae_steps = args.vae_steps or args.steps
    latents, ar_dir = w / f"latents_vae{vae_steps}", w / f"ar_vae{vae_steps}"
    common = [
        f"data.prepared={w / 'data'}", f"data.latents={latents}",
        "train.log_every=1", "train.num_workers=0", "train.sample_every=0",
    ]  # fmt: skip
    timings = {}
    t = time.time()
    prepare_dataset("synthetic", w / "data", resolution=32, num_images=5000, num_proc=2,
                    progress=False)  # fmt: skip
    timings["prepare_s"] = time.time() - t  # reused when the workdir already has it

    vae_recipe = load_recipe(ROOT / "recipes" / "tiny_vae.toml", [
        *common, f"run.output_dir={w / 'vae'}", f"train.max_steps={vae_steps}",
        f"train.checkpoint_every={args.steps}", *args.vae_set,
    ])  # fmt: skip
    t = time.time()
    export = train_vae(vae_recipe, progress=False)
    timings["train_vae_s"] = time.time() - t

    ar_recipe = load_recipe(ROOT / "recipes" / "tiny.toml", [
        *common, f"run.output_dir={ar_dir}", f"train.vae_checkpoint={export}",
        f"train.max_steps={args.steps}", f"train.checkpoint_every={args.steps}", *args.ar_set,
    ])  # fmt: skip
    t = time.time()
    cache_latents(ar_recipe, load_checkpoint(export).vae, export, w / "data", latents,
                  progress=False)  # fmt: skip
    timings["cache_s"] = time.time() - t
    t = time.time()
    train_ar(ar_recipe, progress=False)
    timings["train_ar_s"] = time.time() - t

    every = max(1, args.steps // 6)
    l1 = {m["step"]: m["l1"] for m in read_metrics(w / "vae") if "l1" in m}
    print(json.dumps({
        "steps": args.steps,
        "vae_steps": vae_steps,
        "vae_l1_curve": curve(w / "vae", "l1", every),
        "vae_l1_step_1_to_steps": 1 - l1[min(args.steps, vae_steps)] / l1[1],
        "vae_kl_last": [m["kl"] for m in read_metrics(w / "vae") if "kl" in m][-1],
        "vae_held_out_psnr": [m["held_out_psnr"] for m in read_metrics(w / "vae")
                              if "held_out_psnr" in m],
        "ar_loss_curve": curve(ar_dir, "loss", every),
        "ar_loss": drop(ar_dir, "loss"),
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
