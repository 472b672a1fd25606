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
    from spherear.errors import SpherearError
    from spherear.eval.probe import evaluate, format_table
    from spherear.files import check_output, sweep, write_json
    from spherear.runs import latest_samples, samples_recipe

    if samples is None:
        samples = latest_samples()
        typer.echo(f"samples: {samples} (the newest under runs/)")
    recipe, recipe_path = samples_recipe(samples)
    if data is None:
        if recipe is None:
            raise SpherearError(
                f"no dataset for {samples}: it is not in a run folder with a recipe.toml; pass "
                "--data (a folder made by `spherear prepare-data`)"
            )
        data = Path(recipe.data.prepared)
        typer.echo(f"data: {data} (data.prepared in {recipe_path})")
    flip_invariant = recipe is not None and recipe.augment.hflip
    out = json_out or samples.parent / "eval-probe.json"
    check_output(out, "--json", folder=False)  # before the work, not after
    sweep(out.parent, recursive=False)
    report = evaluate(samples, data, flip_invariant=flip_invariant)
    typer.echo(format_table(report))  # printed first: a failed write loses nothing
    for warning in report["warnings"]:
        typer.echo(f"warning: {warning}", err=True)
    write_json(out, report, "eval-probe/report")
    typer.echo(f"wrote {out}")
