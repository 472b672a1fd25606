"""``spherear train-ar`` (and ``train-vae``): load the recipe, call the trainer."""

from __future__ import annotations

from pathlib import Path

import typer

from spherear.cli.errors import user_errors


@user_errors
def train_ar(
    recipe: Path = typer.Option(..., "--recipe", "-r", help="A TOML recipe with an [ar] section."),
    overrides: list[str] = typer.Option([], "--set", help="Override a recipe value (repeatable)."),
    allow_changes: bool = typer.Option(
        False,
        "--allow-changes",
        help="Resume a run with settings (lr, batch size, seed...) other than it was trained "
        "with; the changes are recorded in its run.json.",
    ),
) -> None:
    """Train SphereAR on the latent cache (or on images, train.inputs = "images"); resumes
    from the newest checkpoint in run.output_dir. Multi-GPU and multi-node with
    `accelerate launch` or `torchrun`."""
    from spherear.config import load_recipe
    from spherear.train.ar import train_ar as run

    typer.echo(f"exported to {run(load_recipe(recipe, overrides), allow_changes=allow_changes)}")


@user_errors
def train_vae(
    recipe: Path = typer.Option(..., "--recipe", "-r", help="A TOML recipe with [vae_loss]."),
    overrides: list[str] = typer.Option([], "--set", help="Override a recipe value (repeatable)."),
    allow_changes: bool = typer.Option(
        False,
        "--allow-changes",
        help="Resume a run with settings (lr, batch size, seed...) other than it was trained "
        "with; the changes are recorded in its run.json.",
    ),
) -> None:
    """Train the S-VAE (L1 + LPIPS + PatchGAN + KL to uniform) on a prepared dataset;
    resumes from the newest checkpoint in run.output_dir."""
    from spherear.config import load_recipe
    from spherear.train.vae import train_vae as run

    typer.echo(f"exported to {run(load_recipe(recipe, overrides), allow_changes=allow_changes)}")
