"""Throughput benchmark of the SphereAR models: training and sampling speed, FLOPs and MFU.

Prints one JSON object to stdout (progress goes to stderr). See benchmarks/README.md.

    python benchmarks/bench_models.py --sizes tiny B --device auto --batch 2

Training is timed from latents (no VAE): ``loss = ar(tokens, labels); loss.backward()`` on
random tokens on the sphere of radius sqrt(latent_dim), without an optimizer step. Sampling
is ``ar.sample`` with CFG 4.5 (linear schedule) and 100 SDE steps; for the large sizes only
the first ``--sample-tokens`` tokens are decoded and the time per token is extrapolated.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from spherear.config import SampleConfig, load_recipe
from spherear.models import build_ar, count_parameters
from spherear.models.ar import SphereAR
from spherear.models.token_sampler import to_sphere

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
SIZES = {"tiny": "tiny.toml", "B": "sphere_b.toml", "L": "sphere_l.toml", "H": "sphere_h.toml"}

# sampling settings of the paper's results (the B/L/H recipes' [sample] section)
CFG, CFG_SCHEDULE, STEPS, SAMPLER = 4.5, "linear", 100, "sde"
DEFAULT_SAMPLE_TOKENS = 16  # sizes other than tiny; tiny decodes all its tokens

MIN_TRAIN_ITERS, MIN_TRAIN_SECONDS = 2, 3.0  # timed training: at least this many and this long


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def sig(x: float, digits: int = 4) -> float:
    """Round to ``digits`` significant figures for a readable JSON."""
    return float(f"{x:.{digits}g}")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (as in training with mixed_precision = "bf16"); fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------
# Machine


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def matmul_gflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """Best-of-``repeats`` GFLOP/s of an n x n x n matmul, 2 n^3 FLOPs each."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    inner = 10 if device.type == "cuda" else 1  # one GPU matmul is too short to time alone
    for _ in range(2):  # warm-up: thread pool / cuBLAS heuristics
        torch.matmul(a, b, out=c)
    sync(device)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            torch.matmul(a, b, out=c)
        sync(device)
        best = min(best, (time.perf_counter() - start) / inner)
    return 2 * n**3 / best / 1e9


# ---------------------------------------------------------------------------------------
# FLOPs, counted analytically


def matmul_params(module: nn.Module) -> int:
    """Weights of the module's nn.Linear layers: each costs 2 FLOPs (multiply + add) per row
    in a forward pass. Embedding look-ups, norm gains and biases are left out."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def flops_per_token(ar: SphereAR, steps: int, guided: bool) -> dict[str, int]:
    """Model FLOPs per image token for training (forward + backward) and for sampling.

    P class tokens, N image tokens, L layers of width w; the trunk sees T = P + N - 1
    positions per image ([class tokens, tokens 0..N-2]), the loss covers the N tokens.
    n_blocks / n_proj / n_head: matmul weights of the blocks, of proj_in and of the head.

    Training, per image (forward; backward = 2x forward, so x3 in all):
        trunk  2 * n_blocks * T + 2 * n_proj * (N - 1)
        attn   2 * 2 * L * T * T * w     QK^T and AV over the full T x T square
                                         (PaLM's convention: no discount for the causal mask)
        head   2 * n_head * k * N        k = diff_batch_mul noisy copies per token
        -> flops_per_token_train = 3 * (trunk + attn + head) / N
           ~= 6 * n_trunk + 6 * 2 * L * T * w + 6 * k * n_head   (T / N ~= 1)

    Sampling with the KV cache, per image and per row (CFG runs a conditional and an
    unconditional row, so x2): every position goes through the trunk once (prefill of the
    class tokens, then one step per token), position t (1-based) attends to t keys; the head
    runs steps + 1 times per token (the SDE steps plus the final Euler step):
        trunk  2 * n_blocks * T + 2 * n_proj * (N - 1) + 2 * 2 * L * w * T * (T + 1) / 2
        head   2 * n_head * (steps + 1) * N
        -> flops_per_token_sample = rows * (trunk + head) / N
    """
    config = ar.config
    P, N = ar.num_prefix, ar.num_tokens
    T = P + N - 1
    L, w, k = config.depth, config.width, config.diff_batch_mul
    n_blocks = matmul_params(ar.layers)
    n_proj = matmul_params(ar.proj_in)
    n_head = matmul_params(ar.head)

    linear = 2 * n_blocks * T + 2 * n_proj * (N - 1)
    train_fwd = linear + 4 * L * T * T * w + 2 * n_head * k * N
    rows = 2 if guided else 1
    sample = rows * (linear + 2 * L * w * T * (T + 1) + 2 * n_head * (steps + 1) * N)
    return {
        "flops_per_token_train": round(3 * train_fwd / N),
        "flops_per_token_sample": round(sample / N),
        "matmul_params_trunk_m": sig((n_blocks + n_proj) / 1e6),
        "matmul_params_head_m": sig(n_head / 1e6),
    }


# ---------------------------------------------------------------------------------------
# Timing


def bench_train(ar: SphereAR, batch: int, device: torch.device) -> tuple[float, int]:
    """AR training throughput from latents, forward + backward, no optimizer step.
    Returns (tokens per second, timed iterations)."""
    ar.train()
    tokens = to_sphere(torch.randn(batch, ar.num_tokens, ar.latent_dim, device=device))
    labels = torch.randint(ar.config.num_classes, (batch,), device=device)

    def step() -> None:
        ar.zero_grad(set_to_none=True)
        with autocast(device):
            loss = ar(tokens, labels)
        loss.backward()

    # warm-up: two iterations, or one if it is slow (B on a CPU)
    start = time.perf_counter()
    step()
    sync(device)
    if time.perf_counter() - start < 5.0:
        step()
        sync(device)

    iters, start = 0, time.perf_counter()
    while True:
        step()
        sync(device)
        iters += 1
        elapsed = time.perf_counter() - start
        if iters >= MIN_TRAIN_ITERS and elapsed >= MIN_TRAIN_SECONDS:
            break
    ar.zero_grad(set_to_none=True)
    return batch * ar.num_tokens * iters / elapsed, iters


class _EnoughTokens(Exception):
    """Raised inside the decoding loop to stop sampling after the timed tokens."""


@contextlib.contextmanager
def first_tokens_only(ar: SphereAR, k: int):
    """Make ``ar.sample`` stop (raising _EnoughTokens) when it asks for token ``k``.

    ``sample`` hands its token sampler ``choose(i, z)`` to ``decode_loop``; an instance attribute
    shadows that method with one that wraps ``choose``, so the timed code is sample's own.
    The k timed tokens each cost one head sampling and one trunk step (the trunk step of
    token k - 1 runs before the stop), like a token of a full run.
    """
    if k >= ar.num_tokens:
        yield
        return
    decode_loop = ar.decode_loop

    def limited(labels, choose):
        def choose_first_k(i: int, z: torch.Tensor) -> torch.Tensor:
            if i == k:
                raise _EnoughTokens
            return choose(i, z)

        decode_loop(labels, choose_first_k)

    ar.decode_loop = limited
    try:
        yield
    finally:
        del ar.decode_loop


def sample_seconds(ar: SphereAR, labels: torch.Tensor, k: int, device: torch.device) -> float:
    """Wall-clock seconds of ``ar.sample`` decoding its first ``k`` tokens."""
    sync(device)
    start = time.perf_counter()
    with contextlib.suppress(_EnoughTokens), first_tokens_only(ar, k), autocast(device):
        ar.sample(labels, SampleConfig(cfg=CFG, cfg_schedule=CFG_SCHEDULE, steps=STEPS,
                                       sampler=SAMPLER))  # fmt: skip
    sync(device)
    return time.perf_counter() - start


def bench_sample(
    ar: SphereAR, batch: int, device: torch.device, k: int, calls: int
) -> tuple[float, float]:
    """Returns (ms per decoding step of the whole batch, images per second)."""
    ar.eval()
    labels = torch.randint(ar.config.num_classes, (batch,), device=device)
    sample_seconds(ar, labels, 1, device)  # warm-up: prefill, cache allocation, kernels
    seconds = sum(sample_seconds(ar, labels, k, device) for _ in range(calls)) / calls
    ms_per_token = 1000 * seconds / k
    return ms_per_token, batch / (ms_per_token / 1000 * ar.num_tokens)


# ---------------------------------------------------------------------------------------


def bench_size(size: str, device: torch.device, args, peak_gflops: float) -> dict:
    recipe = load_recipe(RECIPES / SIZES[size])
    torch.manual_seed(0)
    ar = build_ar(recipe).to(device)
    n = ar.num_tokens
    out = {
        "recipe": f"recipes/{SIZES[size]}",
        "num_tokens": n,
        "params_ar_m": sig(count_parameters(recipe)["AR + head"] / 1e6),
        **flops_per_token(ar, STEPS, guided=CFG != 1.0),
    }

    log(f"{device.type} {size}: training, batch {args.batch}")
    tokens_per_s, iters = bench_train(ar, args.batch, device)
    out["train_tokens_per_s"] = sig(tokens_per_s)
    out["train_iters_timed"] = iters
    out["train_mfu"] = sig(tokens_per_s * out["flops_per_token_train"] / (peak_gflops * 1e9))

    k = args.sample_tokens or (n if size == "tiny" else DEFAULT_SAMPLE_TOKENS)
    k = min(k, n)
    calls = math.ceil(args.sample_images / args.batch)
    log(f"{device.type} {size}: sampling {k}/{n} tokens, batch {args.batch}, {calls} call(s)")
    ms_per_token, images_per_s = bench_sample(ar, args.batch, device, k, calls)
    out["sample_batch"] = args.batch
    out["sample_calls"] = calls
    out["sample_tokens_timed"] = k
    out["sample_ms_per_token"] = sig(ms_per_token)
    out["sample_images_per_s"] = sig(images_per_s)
    sample_flops_per_s = args.batch * out["flops_per_token_sample"] / (ms_per_token / 1000)
    out["sample_mfu"] = sig(sample_flops_per_s / (peak_gflops * 1e9))
    # this run's own threads count too: above the core count means the CPU was shared
    out["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
    del ar
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def bench_device(device: torch.device, args) -> dict:
    """Matmul peak, then every size. MFU is taken against the peak of the dtype the models
    compute in: bf16 on CUDA (autocast), fp32 on the CPU."""
    log(f"{device.type}: matmul peak")
    if device.type == "cuda":
        n, dtype, dtypes = 8192, torch.bfloat16, [torch.bfloat16, torch.float32]
    else:
        n, dtype, dtypes = 2048, torch.float32, [torch.float32]
    measured = {dtype_name(d): matmul_gflops(device, d, n) for d in dtypes}
    peak = measured[dtype_name(dtype)]
    return {
        "device_name": device_name(device),
        "dtype": dtype_name(dtype),
        "matmul_n": n,
        "matmul_gflops": {d: sig(v) for d, v in measured.items()},
        "matmul_peak_gflops": sig(peak),
        "sizes": {size: bench_size(size, device, args, peak) for size in args.sizes},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "B"], choices=list(SIZES))
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto: the CPU, and CUDA too when it is available",
    )
    p.add_argument("--batch", type=int, default=2, help="images per training/sampling batch")
    p.add_argument(
        "--sample-images",
        type=int,
        default=1,
        help="images to sample for the sampling throughput, in batches of --batch",
    )
    p.add_argument(
        "--sample-tokens",
        type=int,
        default=None,
        help=f"decode only the first K tokens and extrapolate (default: {DEFAULT_SAMPLE_TOKENS}"
        ", all tokens for tiny; 0: all tokens)",
    )
    p.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    args = p.parse_args(argv)
    if args.batch < 1 or args.sample_images < 1:
        p.error("--batch and --sample-images must be at least 1")
    if args.sample_tokens is not None and args.sample_tokens < 0:
        p.error("--sample-tokens must be 0 (all) or more")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    devices = ["cpu"] if args.device in ("auto", "cpu") else []
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append("cuda")

    started = time.perf_counter()
    result = {
        "machine": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu_name": cpu_name(),
            "cpu_count": os.cpu_count(),
            "torch_num_threads": torch.get_num_threads(),
            # other processes on the CPU skew every CPU number (threads wait on busy cores)
            "loadavg_1min_at_start": round(os.getloadavg()[0], 2),
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "settings": {
            "batch": args.batch,
            "sample_images": args.sample_images,
            "cfg": CFG,
            "cfg_schedule": CFG_SCHEDULE,
            "steps": STEPS,
            "sampler": SAMPLER,
        },
        "devices": {d: bench_device(torch.device(d), args) for d in devices},
    }
    result["wall_seconds"] = round(time.perf_counter() - started, 1)

    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
