"""Speed of `spherear sample`'s code path: images/s and ms per token, as one JSON object.

    python benchmarks/bench_sample.py [--sizes tiny B] [--batches 2 8] [--prefix-tokens 8]
    python benchmarks/bench_sample.py --compare [--sizes B] [--batches 2 16 64] [--repeats 3]

Random weights (speed does not depend on them); CFG 4.5 with the linear schedule and 100
SDE steps, every image with its own noise generators, as `spherear sample` draws them.
A decoding step of the whole batch (one trunk step and 101 guided head evaluations) is
timed over the first ``--prefix-tokens`` tokens for the sizes other than tiny and
extrapolated to all tokens (``extrapolated`` says so); tiny decodes all its tokens. The VAE
decode and the uint8 quantisation of the batch are timed separately and added.

``--compare`` times the paper's plain loop (``spherear.models.reference_sampling``, the code
path of spherear 0.1) against today's loop, and with ``--compile`` the compiled head step
too, interleaved (A B A B ...) so that a busy machine slows both alike; it prints the
median of each and their ratio, with the load average before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from bench_models import RECIPES, SIZES, _EnoughTokens, cpu_name, first_tokens_only, sig, sync

from spherear.checkpoints import Loaded
from spherear.config import SampleConfig, load_recipe
from spherear.models import build_ar, build_vae
from spherear.models.reference_sampling import reference_sample
from spherear.models.token_sampler import to_sphere
from spherear.sample import noise_generators, to_uint8

CFG, SCHEDULE, STEPS, SAMPLER = 4.5, "linear", 100, "sde"
PAPER = SampleConfig(cfg=CFG, cfg_schedule=SCHEDULE, steps=STEPS, sampler=SAMPLER)


def log(msg: str) -> None:
    print(f"[bench_sample] {msg}", file=sys.stderr, flush=True)


def token_seconds(
    loaded: Loaded, batch: int, k: int, accelerator, loop: str = "current", compiled=False
) -> float:
    """Seconds of decoding the first ``k`` tokens of a batch, per-image generators, with
    today's loop (``current``) or the paper's plain one (``reference``)."""
    device = accelerator.device
    labels = torch.arange(batch, device=device) % loaded.recipe.ar.num_classes
    generators = noise_generators(0, range(batch), device)
    settings = SampleConfig(**{**PAPER.__dict__, "compile": compiled})
    sync(device)
    start = time.perf_counter()
    limited = first_tokens_only(loaded.ar, k)
    with contextlib.suppress(_EnoughTokens), limited, torch.no_grad(), accelerator.autocast():
        if loop == "reference":
            reference_sample(loaded.ar, labels, settings, generators)
        else:
            loaded.ar.sample(labels, settings, generators)
    sync(device)
    return time.perf_counter() - start


def decode_seconds(loaded: Loaded, batch: int, accelerator) -> float:
    """Seconds of the VAE decode and the uint8 quantisation of a batch."""
    ar = loaded.ar
    tokens = to_sphere(torch.randn(batch, ar.num_tokens, ar.latent_dim, device=accelerator.device))
    sync(accelerator.device)
    start = time.perf_counter()
    with torch.no_grad(), accelerator.autocast():
        to_uint8(loaded.vae.decode(tokens))
    return time.perf_counter() - start


def bench(size: str, batches: list[int], prefix: int, accelerator) -> dict:
    recipe = load_recipe(RECIPES / SIZES[size])
    torch.manual_seed(0)
    device = accelerator.device
    loaded = Loaded(recipe, build_vae(recipe).to(device).eval(), build_ar(recipe).to(device).eval(),
                    "random weights")  # fmt: skip
    n = loaded.ar.num_tokens
    k = n if size == "tiny" else min(prefix, n)
    out = {"recipe": f"recipes/{SIZES[size]}", "num_tokens": n, "tokens_timed": k,
           "extrapolated": k < n}  # fmt: skip
    for batch in batches:
        log(f"{size}: batch {batch}, {k}/{n} tokens")
        token_seconds(loaded, batch, 1, accelerator)  # warm-up: prefill, allocations
        ms_per_token = 1000 * token_seconds(loaded, batch, k, accelerator) / k
        decode_seconds(loaded, batch, accelerator)
        decode = decode_seconds(loaded, batch, accelerator)
        per_batch = ms_per_token * n / 1000 + decode
        row = {"ms_per_token": sig(ms_per_token), "vae_decode_s": sig(decode),
               "seconds_per_batch": sig(per_batch),
               "images_per_s": sig(batch / per_batch)}  # fmt: skip
        out[f"batch_{batch}"] = row
    return out


def compare(size: str, batches: list[int], prefix: int, repeats: int, with_compile: bool,
            accelerator) -> dict:  # fmt: skip
    """Medians of ms per token of each loop, timed in turn, and the speed-ups over the
    paper's plain loop."""
    recipe = load_recipe(RECIPES / SIZES[size])
    torch.manual_seed(0)
    device = accelerator.device
    loaded = Loaded(recipe, build_vae(recipe).to(device).eval(), build_ar(recipe).to(device).eval(),
                    "random weights")  # fmt: skip
    n = loaded.ar.num_tokens
    k = n if size == "tiny" else min(prefix, n)
    arms = {"reference": ("reference", False), "current": ("current", False)}
    if with_compile:
        arms["compiled"] = ("current", True)
    out = {"recipe": f"recipes/{SIZES[size]}", "tokens_timed": k, "repeats": repeats}
    for batch in batches:
        row = {}
        for loop, compiled in arms.values():  # warm-up; the compiled arm compiles here
            start = time.perf_counter()
            token_seconds(loaded, batch, 1, accelerator, loop, compiled)
            if compiled:
                row["compile_seconds"] = sig(time.perf_counter() - start)
        times = {arm: [] for arm in arms}
        for r in range(repeats):
            for arm, (loop, compiled) in arms.items():
                log(f"{size}: batch {batch}, {arm}, repeat {r + 1}/{repeats}")
                seconds = token_seconds(loaded, batch, k, accelerator, loop, compiled)
                times[arm].append(1000 * seconds / k)
        medians = {arm: statistics.median(ms) for arm, ms in times.items()}
        row |= {f"{arm}_ms_per_token": sig(ms) for arm, ms in medians.items()}
        row |= {f"{arm}_speedup": sig(medians["reference"] / medians[arm])
                for arm in arms if arm != "reference"}  # fmt: skip
        row["all_ms_per_token"] = {arm: [sig(ms, 3) for ms in v] for arm, v in times.items()}
        out[f"batch_{batch}"] = row
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "B"], choices=list(SIZES))
    p.add_argument("--batches", nargs="+", type=int, default=[2, 8])
    p.add_argument("--prefix-tokens", type=int, default=8, help="tokens timed beyond tiny")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--compare", action="store_true", help="the paper's plain loop vs today's")
    p.add_argument("--compile", action="store_true", help="with --compare: a compiled arm too")
    p.add_argument("--repeats", type=int, default=3, help="with --compare: timings per arm")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    accelerator = Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda else "no")
    started = time.perf_counter()
    result = {
        "machine": {
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name(),
            "cpu_count": os.cpu_count(),
            "torch_num_threads": torch.get_num_threads(),
            "loadavg_1min_at_start": round(os.getloadavg()[0], 2),
            "torch": torch.__version__,
        },
        "settings": {
            "cfg": CFG,
            "cfg_schedule": SCHEDULE,
            "steps": STEPS,
            "sampler": SAMPLER,
            "weights": "random",
            "generators": "one per image",
        },  # fmt: skip
    }
    if args.compare:
        result["compare"] = {
            s: compare(s, args.batches, args.prefix_tokens, args.repeats, args.compile, accelerator)
            for s in args.sizes
        }
    else:
        result["sizes"] = {s: bench(s, args.batches, args.prefix_tokens, accelerator)
                           for s in args.sizes}  # fmt: skip
    result["machine"]["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
