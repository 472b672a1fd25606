"""``spherear sample``: class-conditional samples of a trained model, as an ADM ``.npz``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from spherear.checkpoint_header import Weights
from spherear.cli.errors import finite, user_errors


def ar_checkpoint():
    """The ``--checkpoint`` option of the commands that sample a model (sample, demo)."""
    return typer.Option(
        None,
        "--checkpoint",
        "-c",
        help="A run folder, an export, an authors' .pt or an hf:// address "
        "(default: the newest train-ar run under runs/).",
    )


@user_errors
def sample(
    n: int = typer.Option(
        ...,
        "--n",
        "--num-images",
        min=1,
        help="How many images (50000 for FID). Under torchrun or accelerate launch write "
        "--num-images: their own options make --n ambiguous to them.",
    ),
    checkpoint: str | None = ar_checkpoint(),
    cfg: float | None = typer.Option(
        None,
        "--cfg",
        min=0,
        callback=finite,
        help="Guidance scale; 1 = off (default: the recipe's).",
    ),
    cfg_schedule: Literal["linear", "constant"] | None = typer.Option(
        None, "--cfg-schedule", help="Guidance per token (default: the recipe's)."
    ),
    steps: int | None = typer.Option(
        None, "--steps", min=1, help="Head sampler steps (default: the recipe's)."
    ),
    sampler: Literal["sde", "ode", "heun"] | None = typer.Option(
        None,
        "--sampler",
        help="Head sampler: sde (the paper's), ode (Euler) or heun (second order, few steps) "
        "(default: the recipe's).",
    ),
    steps_last: int | None = typer.Option(
        None,
        "--steps-last",
        min=0,
        help="Step annealing: --steps for the first token falling linearly to this many for "
        "the last; 0 = the same steps for every token (default: the recipe's).",
    ),
    temperature: float | None = typer.Option(
        None,
        "--temperature",
        min=0,
        callback=finite,
        help="Scales the head's noise; 1 = the paper's, below 1 sharper and less varied "
        "tokens (default: the recipe's).",
    ),
    compiled: bool | None = typer.Option(
        None,
        "--compile/--no-compile",
        help="torch.compile the head step (CUDA graphs on a GPU); falls back with a warning "
        "(default: the recipe's).",
    ),
    normalise: Literal["auto", "after_cfg", "before_cfg", "none"] | None = typer.Option(
        None,
        "--normalise",
        help="Where each token goes back onto the sphere: after_cfg (the paper), before_cfg, "
        "none; auto = the model's own (none for raw Gaussian latents) (default: the recipe's).",
    ),
    precision: Literal["fp32", "bf16"] | None = typer.Option(
        None,
        "--precision",
        help="bf16: the AR weights held in bf16, as the authors sample (about 2x faster on a "
        "CPU with bf16 instructions); fp32 (default: the recipe's).",
    ),
    labels: Literal["balanced", "random"] = typer.Option(
        "balanced",
        "--labels",
        help="balanced: n / num_classes per class; random: uniform, as the authors did.",
    ),
    only_class: int | None = typer.Option(
        None,
        "--class",
        min=0,
        help="Every image of this class: its number, from 0, in the order of the sample grid's "
        "rows (`spherear demo` lists the names); in place of --labels.",
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Image i depends on (seed, i) only."),
    batch_size: int = typer.Option(
        100, "--batch-size", min=1, help="Images per chunk and per forward pass (a setting)."
    ),
    weights: Weights = typer.Option("ema", "--weights", help="EMA or raw weights."),
    out: Path | None = typer.Option(
        None, "--out", help="Output folder (default: <run>/samples/<settings tag>)."
    ),
) -> None:
    """Sample N images to samples.npz (arr_0: N x H x W x 3 uint8), labels.npy and grid.png.
    Resumable: rerun the same command after an interruption. The bytes do not depend on the
    number of processes; multi-GPU and multi-node with `accelerate launch` or `torchrun`."""
    from spherear.checkpoint_header import read_header
    from spherear.folder_kinds import SAMPLES, check_output_folder
    from spherear.hub_files import resolve
    from spherear.runs import find_run
    from spherear.sample_plan import Plan, check_plan, default_out

    source = find_run(checkpoint, option="--checkpoint")
    local, _ = resolve(source.checkpoint)  # a hub address that cannot be fetched fails here
    if out is not None:
        check_output_folder(out, SAMPLES, "--out", [local])

    def plan_with(defaults) -> Plan:
        return Plan.from_recipe(
            defaults, n, cfg=cfg, cfg_schedule=cfg_schedule, steps=steps, sampler=sampler,
            steps_last=steps_last, temperature=temperature, compile=compiled,
            precision=precision, normalise=normalise, labels=labels, seed=seed,
            batch_size=batch_size, weights=weights, only_class=only_class,
        )  # fmt: skip

    # checked against the checkpoint's header before torch loads: a 2 GB file takes a while
    header = read_header(local)
    plan = None if header is None else plan_with(header.sample)
    if header is not None:
        check_plan(plan, header)

    from spherear.accelerator import make_accelerator
    from spherear.checkpoints import load_checkpoint
    from spherear.sample import sample_images

    accelerator = make_accelerator()  # the plan says the precision
    say = typer.echo if accelerator.is_main_process else lambda _: None
    if checkpoint is None:
        say(f"sampling the newest train-ar run: {source.run}")
    loaded = load_checkpoint(source.checkpoint, weights)
    plan = plan or plan_with(loaded.recipe.sample)
    if out is None:
        out = default_out(source, plan)
        check_output_folder(out, SAMPLES, "--out", [local])
    say(f"{loaded.description}: {plan.tag}, {plan.precision}, batch {plan.batch_size}, "
        f"{accelerator.num_processes} process(es) -> {out}")  # fmt: skip
    result = sample_images(loaded, plan, out, accelerator)
    say(result.summary())
