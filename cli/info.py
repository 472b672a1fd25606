"""``spherear info``: what a recipe builds, or what a checkpoint file holds."""

from __future__ import annotations

from pathlib import Path

import typer

from spherear.cli.errors import user_errors


@user_errors
def info(
    recipe: Path | None = typer.Option(None, "--recipe", "-r", help="A TOML recipe."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a recipe value, e.g. --set train.lr=1e-4 (repeatable)."
    ),
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", "-c", help="An authors' .pt, a spherear export folder or hf://..."
    ),
) -> None:
    """Print a recipe resolved with its parameter counts, or describe a checkpoint."""
    if checkpoint is not None:  # a hub address that cannot be fetched fails before torch loads
        from spherear.hub_files import resolve

        resolve(checkpoint)
    # torch loads here, not at start-up, so `spherear --help` and fast failures stay fast
    from spherear.checkpoints import inspect_checkpoint
    from spherear.config import load_recipe, recipe_to_toml
    from spherear.models import count_parameters
    from spherear.models.registry import resolve_ar

    if (recipe is None) == (checkpoint is None):
        typer.echo("error: pass exactly one of --recipe or --checkpoint", err=True)
        raise typer.Exit(2)
    if checkpoint is not None:
        typer.echo(inspect_checkpoint(checkpoint).describe())
        return
    resolved = load_recipe(recipe, overrides)
    note = None
    if resolved.ar is not None:
        resolved.ar = resolve_ar(resolved.ar, str(recipe))
        if resolved.ar.num_classes is None:
            resolved.ar, note = _classes_for_counting(resolved)
    typer.echo(f"# {recipe} (resolved)")
    if note:
        typer.echo(f"# {note}")
    typer.echo(recipe_to_toml(resolved))
    typer.echo("# parameters (millions, counted on the meta device)")
    for part, n in count_parameters(resolved).items():
        typer.echo(f"{part:<16}{n / 1e6:8.1f}M")


def _classes_for_counting(recipe):
    """The AR section with the class count train-ar will take from the data, and a note
    saying where it came from."""
    import dataclasses

    from spherear.data.prepare import read_info
    from spherear.errors import SpherearError

    try:
        count = read_info(recipe.data.prepared)["num_classes"]
        note = f"ar.num_classes = {count}: from {recipe.data.prepared}/info.json"
    except SpherearError:
        count = 1000
        note = (f"ar.num_classes is unset and {recipe.data.prepared} is not prepared yet: the "
                "counts assume 1000 classes; train-ar takes the data's")  # fmt: skip
    return dataclasses.replace(recipe.ar, num_classes=count), note


@user_errors
def runs(
    root: Path = typer.Argument(Path("runs"), help="Where the recipes put their runs."),
) -> None:
    """List the runs under ROOT and what they produced: exports, loss curves, grids,
    sample sets and their metrics."""
    from spherear.runs import run_outputs

    found = run_outputs(root)
    if not found:
        typer.echo(f"no runs under {root}/ yet; start one with `spherear train-vae`")
    for run, outputs in found.items():
        typer.echo(run)
        for what, path in outputs.items():
            typer.echo(f"  {what + ':':<34} {path}")
