"""``spherear eval-fid``: ADM-protocol FID, sFID, IS, precision/recall of a samples file."""

from __future__ import annotations

from pathlib import Path

import typer

from spherear.cli.errors import user_errors


@user_errors
def eval_fid(
    samples: Path | None = typer.Argument(
        None, help="Samples .npz (arr_0: N x H x W x 3 uint8); default: the newest in runs/."
    ),
    ref: Path | None = typer.Option(
        None,
        "--ref",
        help="ADM reference batch (arr_0, mu, sigma, mu_s, sigma_s), samples-style .npz or "
        "prepared dataset folder (default: the run's eval.reference).",
    ),
    inception_weights: Path | None = typer.Option(
        None,
        "--inception-weights",
        help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth (default: the "
        "recipe's eval.inception_weights, else torch hub's checkpoint folder).",
    ),
    batch_size: int = typer.Option(50, "--batch-size", min=1, help="Images per forward pass."),
    json_out: Path | None = typer.Option(
        None, "--json", help="Where to write the results (default: eval-fid.json beside SAMPLES)."
    ),
    extra_features: list[str] = typer.Option(
        [],
        "--features",
        help="Also the Fréchet distance in a timm backbone's feature space, reported as "
        "FD_<model> (never FID): timm:MODEL (hub) or timm:MODEL=WEIGHTS (repeatable).",
    ),
) -> None:
    """Evaluate samples with the ADM protocol (the numbers papers report): FID, sFID, IS,
    precision and recall, in PyTorch with the 2015-12-05 Inception weights. Features are
    cached per file; multi-process with `accelerate launch` or `torchrun`."""
    import torch
    from accelerate import Accelerator

    from spherear.errors import SpherearError
    from spherear.eval import evaluate, format_table
    from spherear.eval.features import resolve_inception_weights
    from spherear.eval.npz import NpzImages
    from spherear.files import check_output, sweep, write_json
    from spherear.runs import latest_samples, samples_recipe

    # without cpu=True, Accelerate ignores torchrun's processes on a machine without CUDA
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    say = typer.echo if accelerator.is_main_process else lambda *a, **k: None
    if samples is None:
        samples = latest_samples()
        say(f"samples: {samples} (the newest under runs/)")
    NpzImages(samples)  # a bad file stops here, before the reference is looked for
    out = json_out or samples.parent / "eval-fid.json"
    check_output(out, "--json", folder=False)  # before hours of work, not after
    sweep(out.parent, recursive=False)
    recipe, recipe_path = samples_recipe(samples)
    if ref is None:
        if recipe is None or not recipe.eval.reference:
            where = f"eval.reference in {recipe_path}" if recipe else "eval.reference"
            raise SpherearError(
                f"no reference for {samples}: pass --ref (an ADM reference batch such as "
                f"VIRTUAL_imagenet256_labeled.npz, a samples .npz or a prepared dataset folder) "
                f"or set {where}"
            )
        ref = Path(recipe.eval.reference)
        say(f"reference: {ref} (eval.reference in {recipe_path})")
    weights = resolve_inception_weights(
        inception_weights or (recipe.eval.inception_weights if recipe else None)
    )
    report = evaluate(
        samples,
        ref,
        weights,
        extra_features,
        batch_size,
        accelerator,
        warn=lambda message: typer.echo(f"warning: {message}", err=True),
    )
    if report is None:
        return
    say(format_table(report))  # printed first: a failed write loses nothing
    write_json(out, report, "eval-fid/report")
    say(f"wrote {out}")
