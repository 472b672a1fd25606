"""``spherear eval-probe``: class-consistency and FD_probe of samples under a small
classifier trained on the generator's own data, for small images where no Inception weights
exist (the tiny/synthetic setting). Not FID."""

from __future__ import annotations

from pathlib import Path

import typer

from spherear.cli.errors import user_errors


@user_errors
def eval_probe(
    samples: Path | None = typer.Argument(
        None,
        help="Samples .npz (arr_0: N x H x W x 3 uint8) with labels.npy beside it; default: "
        "the newest in runs/.",
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="The prepared dataset the probe trains on (default: data.prepared of the "
        "samples' run).",
    ),
    json_out: Path | None = typer.Option(
        None, "--json", help="Where to write the results (default: eval-probe.json beside SAMPLES)."
    ),
) -> None:
    """Score samples with a small CNN trained on the dataset (once, on CPU; cached in
    $SPHEREAR_CACHE/probes or ~/.cache/spherear/probes, never in DATA): the share classified
    as their conditioning class (probe class-consistency) and the Fréchet distance of its
    features to held-out real images (FD_probe, not FID). It trains on mirror images only if
    the samples' recipe has augment.hflip = true (its classes are flip-invariant)."""
    from spherear.eval.probe import eval_probe as run

    run(
        samples,
        data,
        json_out,
        say=typer.echo,
        warn=lambda message: typer.echo(f"warning: {message}", err=True),
    )
