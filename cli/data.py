"""``spherear prepare-data`` and ``spherear cache-latents``."""

from __future__ import annotations

from pathlib import Path

import typer

from spherear.cli.errors import user_errors


@user_errors
def prepare_data(
    recipe: Path | None = typer.Option(
        None, "--recipe", "-r", help="Take source, output and resolution from this recipe."
    ),
    source: str | None = typer.Option(
        None, "--source", help="hf:<dataset id>[@revision], folder:<path>, tar:<path> or synthetic."
    ),
    out: Path | None = typer.Option(None, "--out", help="Output folder (made when complete)."),
    resolution: int | None = typer.Option(
        None, "--resolution", min=1, help="Training resolution (default 256 or the recipe's)."
    ),
    num_proc: int = typer.Option(1, "--num-proc", min=1, help="Worker processes."),
    split: str = typer.Option(
        "train",
        "--split",
        help="train or validation (alias val); a folder: source reads train/ or val/ "
        "(or validation/).",
    ),
    num_images: int | None = typer.Option(
        None,
        "--num-images",
        min=1,
        help="synthetic only: how many images (default 10000); other sources take every image.",
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="synthetic only: the generator's seed."),
    overrides: list[str] = typer.Option([], "--set", help="Override a recipe value."),
) -> None:
    """Turn ImageNet (hub, folder or the original tar) or the synthetic set into one
    Parquet format, resumably; an existing complete output is reused."""
    from spherear.config import Recipe, load_recipe
    from spherear.data.prepare import prepare_dataset
    from spherear.errors import SpherearError

    r = load_recipe(recipe, overrides) if recipe else Recipe()
    if recipe is None and (source is None or out is None):
        raise SpherearError("pass --recipe, or both --source and --out")
    result = prepare_dataset(
        source or r.data.source,
        out or Path(r.data.prepared),
        r.vae.resolution if resolution is None else resolution,
        num_proc,
        split,
        r.data.num_images if num_images is None else num_images,
        seed,
        r.augment.random_crop_min,
    )
    typer.echo(result.summary())


@user_errors
def cache_latents(
    recipe: Path = typer.Option(
        ..., "--recipe", "-r", help="The recipe (its vae, cache and data sections)."
    ),
    vae: str | None = typer.Option(
        None,
        "--vae",
        help="A spherear export or the authors' vae.pt (default: the recipe's "
        "train.vae_checkpoint).",
    ),
    data: Path | None = typer.Option(
        None, "--data", help="A folder made by prepare-data (default: the recipe's data.prepared)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="The cache folder (default: the recipe's data.latents)."
    ),
    overrides: list[str] = typer.Option([], "--set", help="Override a recipe value."),
) -> None:
    """Encode a prepared dataset with a trained S-VAE into a sharded, resumable cache of
    posteriors (centre crop and flip, plus optional random crops). Multi-process with
    `accelerate launch` or `torchrun`."""
    from spherear.config import load_recipe
    from spherear.data.latent_cache import cache_recipe

    cached = cache_recipe(load_recipe(recipe, overrides), vae, data, out)
    if cached is not None:
        typer.echo(cached.summary())
