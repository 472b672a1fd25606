"""fp32 against bf16, interleaved: sampling ms per token and training step time and MFU.

    OMP_NUM_THREADS=1 python benchmarks/bench_precision.py [--batches 2 16 64 256] [--repeats 2]

Sampling is `spherear sample`'s code path on SphereAR-B with random weights at the paper's
settings (CFG 4.5 linear, 100 SDE steps, a generator per image): fp32, and bf16 as
``[sample] precision = "bf16"`` runs it (``spherear.precision.held_in``: the weights held in
bf16). A steady decoding step is timed: the first ``--tokens`` tokens
less the first one (which holds the prefill), per token. Training is one step of
``train-ar``'s arithmetic (forward, backward, AdamW) under ``train.mixed_precision`` "no" and
"bf16", for tiny and B at ``--train-batch``; its MFU is against the measured matmul peak of
the dtype the products run in (fp32 or bf16). Arms alternate (A B A B) and the medians are
printed with the load average before and after; ``--clock cpu`` (the default) times this
process's CPU time, which a busy machine hardly moves with one torch thread.
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

import torch
from bench_models import (
    RECIPES,
    SIZES,
    _EnoughTokens,
    cpu_name,
    first_tokens_only,
    flops_per_token,
    sig,
)

from spherear.config import SampleConfig, load_recipe
from spherear.models import build_ar
from spherear.models.token_sampler import to_sphere
from spherear.precision import autocast, held_in
from spherear.sample import noise_generators

PAPER = SampleConfig(cfg=4.5, cfg_schedule="linear", steps=100, sampler="sde")
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
ARMS = ("fp32", "bf16")


def log(msg: str) -> None:
    print(f"[bench_precision] {msg}", file=sys.stderr, flush=True)


def random_ar(size: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_ar(load_recipe(RECIPES / SIZES[size]))


def decode_seconds(ar, batch: int, k: int, clock, settings: SampleConfig = PAPER) -> float:
    """Seconds for the first ``k`` tokens of a batch, as ``spherear sample`` draws them
    (in the precision ``ar`` is held in)."""
    device = torch.device("cpu")
    labels = torch.arange(batch) % ar.config.num_classes
    generators = noise_generators(0, range(batch), device)
    start = clock()
    with contextlib.suppress(_EnoughTokens), first_tokens_only(ar, k), torch.inference_mode():
        ar.sample(labels, settings, generators)
    return clock() - start


def kv_cache_gib(ar, batch: int, bytes_per_number: int) -> float:
    """The KV cache of a guided batch: every layer's keys and values for 2 x batch rows."""
    positions = ar.num_prefix + ar.num_tokens - 1
    numbers = ar.config.depth * 2 * 2 * batch * positions * ar.config.width
    return numbers * bytes_per_number / 2**30


def bench_sampling(batches: list[int], tokens: int, repeats: int, clock, compiled: bool) -> dict:
    import psutil

    fp32 = random_ar("B").eval()
    bf16 = held_in(fp32, "bf16")
    models = {"fp32": (fp32, PAPER), "bf16": (bf16, PAPER)}
    if compiled:  # the head step through torch.compile (inductor, weights frozen)
        models["bf16_compiled"] = (bf16, SampleConfig(**{**PAPER.__dict__, "compile": True}))
    out = {}
    for batch in batches:
        # an arm whose KV cache does not fit beside the other jobs is left out, and said so
        free = psutil.virtual_memory().available / 2**30
        need = {arm: kv_cache_gib(fp32, batch, 4 if arm == "fp32" else 2) for arm in models}
        arms = [arm for arm in models if need[arm] < 0.8 * free]
        out[f"batch_{batch}"] = row = {"kv_cache_gib": {a: sig(v, 3) for a, v in need.items()},
                                       "available_gib": sig(free, 3)}  # fmt: skip
        times = {arm: [] for arm in arms}
        load = os.getloadavg()[0]
        for arm in arms:  # warm-up: allocations, oneDNN kernels
            decode_seconds(models[arm][0], batch, 1, clock, models[arm][1])
        for r in range(repeats):
            for arm in arms:
                first = decode_seconds(models[arm][0], batch, 1, clock, models[arm][1])
                k = decode_seconds(models[arm][0], batch, tokens, clock, models[arm][1])
                times[arm].append(1000 * (k - first) / (tokens - 1))
                log(f"batch {batch} repeat {r} {arm}: {times[arm][-1]:.0f} ms/token")
        median = {arm: statistics.median(v) for arm, v in times.items()}
        row.update({f"{arm}_ms_per_token": sig(median[arm]) for arm in arms})
        if "fp32" in arms:
            row.update({f"{arm}_speedup": sig(median["fp32"] / median[arm], 3)
                        for arm in arms if arm != "fp32"})  # fmt: skip
        row["all_ms"] = {arm: [sig(t) for t in v] for arm, v in times.items()}
        row["loadavg_1min"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    return out


def matmul_peak_gflops(dtype: torch.dtype, clock, n: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` GFLOP/s of an n x n x n product, timed by the steps' ``clock``
    (a wall-clock peak on a busy machine would understate it, and overstate the MFU)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b, clock) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(f, clock) -> float:
    start = clock()
    f()
    return clock() - start


def train_step(ar, optimizer, tokens, labels, precision: str, clock) -> float:
    """Seconds of one training step: forward under ``precision``, backward, AdamW."""
    start = clock()
    with autocast(torch.device("cpu"), precision):
        loss = ar(tokens, labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return clock() - start


def bench_training(sizes: list[str], batch: int, repeats: int, clock, peaks: dict) -> dict:
    out = {}
    for size in sizes:
        ar = random_ar(size).train()
        optimizer = torch.optim.AdamW(ar.parameters(), lr=1e-4, fused=True)
        tokens = to_sphere(torch.randn(batch, ar.num_tokens, ar.latent_dim))
        labels = torch.randint(ar.config.num_classes, (batch,))
        flops = flops_per_token(ar, PAPER.steps, guided=True)["flops_per_token_train"]

        step = functools.partial(train_step, ar, optimizer, tokens, labels, clock=clock)
        for arm in ARMS:
            step(arm)  # warm-up
        times = {arm: [] for arm in ARMS}
        load = os.getloadavg()[0]
        for _ in range(repeats):
            for arm in ARMS:
                times[arm].append(step(arm))
        row = {"batch": batch, "flops_per_token": flops}
        for arm in ARMS:
            seconds = statistics.median(times[arm])
            rate = batch * ar.num_tokens * flops / seconds
            row[f"{arm}_step_s"] = sig(seconds)
            row[f"{arm}_mfu"] = sig(rate / (peaks[arm] * 1e9), 3)
        row["speedup"] = sig(row["fp32_step_s"] / row["bf16_step_s"], 3)
        row["loadavg_1min"] = [round(load, 2), round(os.getloadavg()[0], 2)]
        out[size] = row
        log(f"train {size}: {row}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", nargs="+", type=int, default=[2, 16, 64, 256])
    p.add_argument("--tokens", type=int, default=3, help="tokens decoded per timing (>= 2)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--train-sizes", nargs="*", default=["tiny", "B"], choices=list(SIZES))
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--clock", choices=list(CLOCKS), default="cpu")
    p.add_argument("--compile", action="store_true", help="a bf16 arm with --compile too")
    args = p.parse_args()
    clock = CLOCKS[args.clock]
    started = time.perf_counter()
    peaks = {
        arm: matmul_peak_gflops(dtype, clock)
        for arm, dtype in zip(ARMS, (torch.float32, torch.bfloat16), strict=True)
    }
    result = {
        "machine": {
            "cpu": cpu_name(),
            "torch_num_threads": torch.get_num_threads(),
            "clock": args.clock,
            "torch": torch.__version__,
            "matmul_gflops": {arm: sig(v) for arm, v in peaks.items()},
            "loadavg_1min_at_start": round(os.getloadavg()[0], 2),
        },  # fmt: skip
        "sampling_B": bench_sampling(args.batches, args.tokens, args.repeats, clock, args.compile),
        "training": bench_training(args.train_sizes, args.train_batch, args.repeats, clock, peaks),
    }
    result["machine"]["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
