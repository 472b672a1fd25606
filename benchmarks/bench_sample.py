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
median of each and their ratio, with the load average before and after. Its ms per token
is a steady decoding step: the time of the first ``--prefix-tokens`` tokens less that of the
first one (which also holds the prefill of the class tokens), per token; ``first_token_ms``
is that first one. ``--also 'heun 8'`` adds arms of today's loop with other samplers.
``--clock cpu`` times with the process's CPU time instead of the wall clock: with one torch
thread (OMP_NUM_THREADS=1) it hardly moves when other processes share the cores, where
wall-clock medians on a loaded machine can swing by 2x between repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
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
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def log(msg: str) -> None:
    print(f"[bench_sample] {msg}", file=sys.stderr, flush=True)


def token_seconds(
    loaded: Loaded,
    batch: int,
    k: int,
    accelerator,
    loop: str = "current",
    settings=PAPER,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Seconds of decoding the first ``k`` tokens of a batch, per-image generators, with
    today's loop (``current``) or the paper's plain one (``reference``)."""
    device = accelerator.device
    labels = torch.arange(batch, device=device) % loaded.recipe.ar.num_classes
    generators = noise_generators(0, range(batch), device)
    sync(device)
    start = clock()
    limited = first_tokens_only(loaded.ar, k)
    with contextlib.suppress(_EnoughTokens), limited, torch.no_grad(), accelerator.autocast():
        if loop == "reference":
            reference_sample(loaded.ar, labels, settings, generators)
        else:
            loaded.ar.sample(labels, settings, generators)
    sync(device)
    return clock() - start


def decode_seconds(loaded: Loaded, batch: int, accelerator) -> float:
    """Seconds of the VAE decode and the uint8 quantisation of a batch."""
    ar = loaded.ar
    tokens = to_sphere(torch.randn(batch, ar.num_tokens, ar.latent_dim, device=accelerator.device))
    sync(accelerator.device)
    start = time.perf_counter()
    with torch.no_grad(), accelerator.autocast():
        to_uint8(loaded.vae.decode(tokens))
    return time.perf_counter() - start


def random_models(size: str, device: torch.device) -> Loaded:
    """The size's recipe with seeded random weights: speed does not depend on them."""
    recipe = load_recipe(RECIPES / SIZES[size])
    torch.manual_seed(0)
    vae, ar = build_vae(recipe).to(device).eval(), build_ar(recipe).to(device).eval()
    return Loaded(recipe, vae, ar, "random weights")


def bench(size: str, batches: list[int], prefix: int, accelerator) -> dict:
    loaded = random_models(size, accelerator.device)
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


def vae_seconds(
    vae, batch: int, resolution: int, encode: bool, clock: Callable[[], float], reference: bool
) -> float:
    """Seconds of one VAE encode or decode of a batch. ``reference``: spherear 0.1's layout,
    which train mode keeps (eval-mode encoding feeds channels-last images)."""
    vae.train(reference)
    images = torch.rand(batch, 3, resolution, resolution) * 2 - 1
    tokens = to_sphere(torch.randn(batch, vae.cfg.num_tokens, vae.cfg.latent_dim))
    start = clock()
    with torch.no_grad():
        vae.encode(images).mu if encode else vae.decode(tokens)
    vae.eval()
    return clock() - start


def _interleaved(arms: dict, repeats: int, name: str) -> dict[str, list[float]]:
    """Each arm's timings, taking the arms in turn, ``repeats`` times."""
    times = {arm: [] for arm in arms}
    for r in range(repeats):
        for arm, timed in arms.items():
            log(f"{name}, {arm}, repeat {r + 1}/{repeats}")
            times[arm].append(timed())
    return times


def _row(times: dict[str, list[float]], unit: str) -> dict:
    medians = {arm: statistics.median(v) for arm, v in times.items()}
    return {
        **{f"{arm}_{unit}": sig(m) for arm, m in medians.items()},
        **{f"{arm}_speedup": sig(medians["reference"] / m) for arm, m in medians.items()
           if arm != "reference"},
        f"all_{unit}": {arm: [sig(t, 3) for t in v] for arm, v in times.items()},
    }  # fmt: skip


def compare(size: str, batches: list[int], prefix: int, repeats: int, with_compile: bool,
            also: list[SampleConfig], accelerator,
            clock: Callable[[], float] = time.perf_counter) -> dict:  # fmt: skip
    """Medians of ms per token of each loop (and of the VAE's encode and decode), timed in
    turn, and the speed-ups over the paper's plain loop."""
    loaded = random_models(size, accelerator.device)
    recipe, device = loaded.recipe, accelerator.device
    n = loaded.ar.num_tokens
    k = n if size == "tiny" else max(2, min(prefix, n))
    paper = {"reference": ("reference", PAPER), "current": ("current", PAPER)}
    if with_compile:
        paper["compiled"] = ("current", SampleConfig(**{**PAPER.__dict__, "compile": True}))
    for settings in also:
        last = f"->{settings.steps_last}" if settings.steps_last else ""
        paper[f"{settings.sampler} {settings.steps}{last}"] = ("current", settings)
    out = {"recipe": f"recipes/{SIZES[size]}", "tokens_timed": k, "repeats": repeats}
    for batch in batches:
        row = {}
        for arm, (loop, settings) in paper.items():  # warm-up; a compiled arm compiles here
            start = time.perf_counter()
            token_seconds(loaded, batch, 1, accelerator, loop, settings)
            if settings.compile:
                row[f"{arm}_warmup_seconds"] = sig(time.perf_counter() - start)
        # the prefill of the class tokens and the first token, then k tokens: their difference
        # is k - 1 steady decoding steps; a whole image costs the first plus N - 1 of those
        arms = {f"{arm}@{j}": functools.partial(token_seconds, loaded, batch, j, accelerator,
                                                *how, clock)
                for arm, how in paper.items() for j in (1, k)}  # fmt: skip
        times = _interleaved(arms, repeats, f"{size}: batch {batch}")
        steady = {arm: [1000 * (b - a) / (k - 1) for a, b in
                        zip(times[f"{arm}@1"], times[f"{arm}@{k}"], strict=True)]
                  for arm in paper}  # fmt: skip
        row |= _row(steady, "ms_per_token")
        row["first_token_ms"] = {arm: sig(1000 * statistics.median(times[f"{arm}@1"]))
                                 for arm in paper}  # fmt: skip
        for what in ("encode", "decode") if device.type == "cpu" else ():  # a CPU question
            timed = functools.partial(vae_seconds, loaded.vae, batch, recipe.vae.resolution,
                                      what == "encode", clock)  # fmt: skip
            arms = {"reference": functools.partial(timed, True),
                    "current": functools.partial(timed, False)}  # fmt: skip
            row[f"vae_{what}"] = _row(_interleaved(arms, repeats, f"{size}: {what}"), "seconds")
        out[f"batch_{batch}"] = row
    return out


def _settings(text: str) -> SampleConfig:
    sampler, steps, *last = text.split()
    return SampleConfig(**{**PAPER.__dict__, "sampler": sampler, "steps": int(steps),
                           "steps_last": int(last[0]) if last else 0})  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "B"], choices=list(SIZES))
    p.add_argument("--batches", nargs="+", type=int, default=[2, 8])
    p.add_argument("--prefix-tokens", type=int, default=8, help="tokens timed beyond tiny")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--compare", action="store_true", help="the paper's plain loop vs today's")
    p.add_argument("--compile", action="store_true", help="with --compare: a compiled arm too")
    p.add_argument("--repeats", type=int, default=3, help="with --compare: timings per arm")
    p.add_argument("--also", nargs="*", default=[], metavar="'SAMPLER STEPS [LAST]'",
                   help="with --compare: more arms of today's loop, e.g. 'heun 8'")  # fmt: skip
    p.add_argument("--clock", choices=list(CLOCKS), default="wall",
                   help="with --compare: wall clock, or this process's CPU time")  # fmt: skip
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    accelerator = Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda else "no")
    started = time.perf_counter()
    result = {
        "machine": {
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name(),
            "cpu_count": os.cpu_count(),
            "torch_num_threads": torch.get_num_threads(),
            "clock": args.clock,
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
            s: compare(
                s,
                args.batches,
                args.prefix_tokens,
                args.repeats,
                args.compile,
                [_settings(a) for a in args.also],
                accelerator,
                CLOCKS[args.clock],
            )
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
