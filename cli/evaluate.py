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
    from spherear.eval import eval_fid as run

    run(
        samples,
        ref,
        inception_weights,
        extra_features,
        batch_size,
        json_out,
        say=typer.echo,
        warn=lambda message: typer.echo(f"warning: {message}", err=True),
    )
