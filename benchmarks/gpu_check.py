"""The speed part of the GPU check (``gpu_check.sh`` runs it): one JSON object, then one
PASS/FAIL line per check.

    bash benchmarks/gpu_check.sh            # or: python benchmarks/gpu_check.py [--quick]

On one GPU, in a few minutes: the bf16 and fp32 matmul peak; SphereAR-B training under bf16
autocast (tokens/s, MFU against the bf16 peak, peak memory); SphereAR-B sampling at the
paper's settings (CFG 4.5 linear, 100 SDE steps) with the weights held in bf16 as
``[sample] precision = "bf16"`` samples, at batch 256: eager, with the head step compiled,
and compiled with CUDA graphs (images/s extrapolated from the first tokens, and how far the
compiled tokens are from the eager ones); peak memory of each. Random weights: speed does
not depend on them. ``--quick`` runs the same code on the tiny model (and on the CPU when
there is no GPU), to check the script itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch
from bench_models import (
    RECIPES,
    SIZES,
    _EnoughTokens,
    bench_train,
    first_tokens_only,
    flops_per_token,
    matmul_gflops,
    sig,
    sync,
)

from spherear.config import SampleConfig, load_recipe
from spherear.models import build_ar, token_sampler
from spherear.precision import autocast, held_in
from spherear.sample import noise_generators

PAPER = SampleConfig(cfg=4.5, cfg_schedule="linear", steps=100, sampler="sde")


def peak_memory_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return sig(torch.cuda.max_memory_allocated(device) / 2**30)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def sample_tokens(ar, batch: int, k: int, settings: SampleConfig, device) -> tuple[float, list]:
    """Seconds for the first ``k`` tokens of a batch, and the tokens it drew."""
    labels = torch.arange(batch, device=device) % ar.config.num_classes
    generators = noise_generators(0, range(batch), device)
    drawn = []
    handle = ar.proj_in.register_forward_pre_hook(lambda m, args: drawn.append(args[0].float()))
    sync(device)
    start = time.perf_counter()
    with contextlib.suppress(_EnoughTokens), first_tokens_only(ar, k), torch.inference_mode():
        ar.sample(labels, settings, generators)
    sync(device)
    seconds = time.perf_counter() - start
    handle.remove()
    return seconds, drawn


def bench_sampling(ar, batch: int, k: int, device) -> dict:
    arms = {"eager": (False, None), "compiled": (True, "default"),
            "compiled_cuda_graphs": (True, "reduce-overhead")}  # fmt: skip
    out, reference = {}, None
    for arm, (compiled, mode) in arms.items():
        if compiled and device.type != "cuda" and mode == "reduce-overhead":
            continue  # CUDA graphs need a GPU
        token_sampler.COMPILE_MODES[device.type] = None if mode == "default" else mode
        settings = SampleConfig(**{**PAPER.__dict__, "compile": compiled})
        reset_peak(device)
        warm, _ = sample_tokens(ar, batch, 2, settings, device)  # compiles, captures graphs
        seconds, drawn = sample_tokens(ar, batch, k, settings, device)
        tokens = torch.cat(drawn)
        reference = tokens if reference is None else reference
        ms_per_token = 1000 * seconds / k
        out[arm] = {
            "warmup_seconds": sig(warm),
            "ms_per_token": sig(ms_per_token),
            "images_per_s": sig(batch / (ms_per_token / 1000 * ar.num_tokens)),
            "max_abs_diff_to_eager": sig((tokens - reference).abs().max().item()),
            "peak_memory_gib": peak_memory_gib(device),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the tiny model: checks the script")
    p.add_argument("--sample-batch", type=int, default=256)
    p.add_argument("--sample-tokens", type=int, default=8, help="tokens timed (extrapolated)")
    p.add_argument("--train-batch", type=int, default=64)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = "tiny" if args.quick else "B"
    batch = 4 if args.quick else args.sample_batch
    started = time.perf_counter()
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "size": size}  # fmt: skip
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 peak is plain fp32
        result["matmul_tflops"] = {
            str(d).removeprefix("torch."): sig(matmul_gflops(device, d, 8192) / 1000)
            for d in (torch.bfloat16, torch.float32)
        }
    torch.manual_seed(0)
    ar = build_ar(load_recipe(RECIPES / SIZES[size])).to(device)
    flops = flops_per_token(ar, PAPER.steps, guided=True)

    reset_peak(device)
    with autocast(device, "bf16"):  # as train.mixed_precision = "bf16"
        tokens_per_s, iters = bench_train(ar, 2 if args.quick else args.train_batch, device)
    peak = result.get("matmul_tflops", {}).get("bfloat16")
    result["train_bf16"] = {
        "batch": 2 if args.quick else args.train_batch,
        "iters": iters,
        "tokens_per_s": sig(tokens_per_s),
        "mfu": sig(tokens_per_s * flops["flops_per_token_train"] / (peak * 1e12)) if peak else None,
        "peak_memory_gib": peak_memory_gib(device),
    }
    ar = held_in(ar.eval(), "bf16")  # as [sample] precision = "bf16" samples
    k = min(args.sample_tokens, ar.num_tokens)
    result["sample_bf16"] = {"batch": batch, "tokens_timed": k,
                             **bench_sampling(ar, batch, k, device)}  # fmt: skip
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))
    for line in verdicts(result):
        print(line)


def verdicts(result: dict) -> list[str]:
    """One PASS/FAIL line per check. Compiled tokens may differ from eager ones by rounding
    only: kernels fuse and sum in another order, in bf16 (spacing 2^-5 at the tokens'
    radius of 4) for the first tokens, so more than 2^-3 means another computation."""
    lines = []

    def check(name: str, ok: bool, detail: str) -> None:
        lines.append(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")

    train = result["train_bf16"]
    check("bf16 training of " + result["size"], train["tokens_per_s"] > 0,
          f"{train['tokens_per_s']} tokens/s, MFU {train['mfu']}, "
          f"peak {train['peak_memory_gib']} GiB")  # fmt: skip
    for arm, row in result["sample_bf16"].items():
        if not isinstance(row, dict):
            continue
        ok = row["max_abs_diff_to_eager"] <= 2**-3 and row["images_per_s"] > 0
        check(f"bf16 sampling, {arm}, batch {result['sample_bf16']['batch']}", ok,
              f"{row['images_per_s']} images/s, {row['max_abs_diff_to_eager']} from eager, "
              f"peak {row['peak_memory_gib']} GiB")  # fmt: skip
    return lines


if __name__ == "__main__":
    main()
